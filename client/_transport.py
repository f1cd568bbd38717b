"""The background sender: batches events to the daemon, keeps what is unacknowledged, spools.

The pipeline's thread only appends to a deque (lock-free in CPython). One daemon thread
per process owns the ZeroMQ socket: it numbers events (per-client sequence), packs them
in batches, sends without blocking and keeps every batch until the daemon acknowledges
it. When the daemon is unreachable (no peer, or no ack within `ack_timeout_s`), the
unacknowledged batches and everything after them go to a spool file; the sender probes
the daemon and, once it answers, resends the spool in order and deletes it. The daemon
de-duplicates by (client_id, seq), so resending is always safe.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from stagewatch._curve import configure_client
from stagewatch._home import ipc_path
from stagewatch._protocol import (
    RUN_FINISHED,
    event_type_and_run,
    events_lost,
    pack_batch,
    pack_event,
    representable_ns,
    unpack_ack,
)
from stagewatch._records import encode_records
from stagewatch._spool import SpoolFile

_log = logging.getLogger("stagewatch")
# After the close deadline, the longest that spooling what is left may take (it is bounded by
# the queue's size; only a disk that hangs reaches this).
SPILL_LIMIT_S = 30.0


@dataclass(frozen=True)
class SenderSettings:
    max_queue_events: int = 500_000  # beyond this the hot path drops and counts
    batch_max_events: int = 1_000
    batch_max_bytes: int = 4 * 1024 * 1024  # the daemon drops frames over 16 MiB
    window_batches: int = 32  # batches in flight before the sender waits for acks
    ack_timeout_s: float = 3.0
    probe_interval_s: float = 0.5
    heartbeat_interval_s: float = 1.0
    poll_interval_s: float = 0.01
    connect_grace_s: float = 0.5  # a new socket may take this long to connect before we spool


@dataclass
class _Inflight:
    sent_at: float
    payloads: list[bytes]
    spool_end: int | None  # offset in the spool just past this batch, if it came from there


@dataclass
class SenderStats:
    emitted: int = 0
    dropped: int = 0
    acked_events: int = 0
    spooled_events: int = 0
    batches_sent: int = 0
    internal_errors: int = 0
    spool_errors: int = 0
    lost_at_exit: int = 0  # numbered events neither acknowledged nor spooled when the sender stopped


@dataclass
class _Loss:
    """What the end of the sender could not spool: counted per run, and why."""

    reason: str | None = None
    by_run: collections.Counter[str] = field(default_factory=collections.Counter)
    # Refused run_finished events: written with the loss report, so a run still ends as it said.
    run_ends: list[bytes] = field(default_factory=list)

    def add(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            kind, run_id = event_type_and_run(payload)
            if kind == RUN_FINISHED:
                self.run_ends.append(payload)
            else:
                self.by_run[run_id] += 1

    @property
    def events(self) -> int:
        return sum(self.by_run.values())


class Sender:
    """Delivers events from this process to the daemon; see the module docstring."""

    def __init__(
        self,
        client_id: str,
        endpoint: str,
        spool_dir: Path,
        settings: SenderSettings = SenderSettings(),
        heartbeat: Callable[[], dict | None] = lambda: None,
    ) -> None:
        self.client_id = client_id
        self.stats = SenderStats()
        self._endpoint = endpoint
        self._spool_dir = spool_dir
        self._settings = settings
        self._heartbeat = heartbeat
        self._queue: collections.deque[dict | Callable[[], dict | None]] = collections.deque()
        self._seq = 0
        self._batch_numbers = itertools.count(1)
        self._spool_numbers = itertools.count(1)
        self._inflight: dict[int, _Inflight] = {}
        self._held: collections.deque[list[bytes]] = collections.deque()  # refused by the disk
        self._spool: SpoolFile | None = None
        # (offset, payloads) of the spill's latest appends: room for the loss report is made there
        # The spool file's latest appends (offset, records): a run's end refused at shutdown takes their room.
        self._appends: collections.deque[tuple[int, list[bytes]]] = collections.deque(maxlen=64)
        self._read_offset = 0
        self._acked_offset = 0
        self._next_probe = 0.0
        self._unreachable = False  # set when the daemon failed to answer, cleared by an ack
        self._next_heartbeat = 0.0
        self._closing = False
        self._close_deadline = 0.0
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stagewatch-sender", daemon=True)
        start_without_signals(self._thread)

    # -- the pipeline's side -------------------------------------------------------------
    def emit(self, event: dict | Callable[[], dict | None]) -> None:
        """Queue one event (or a callable that builds it); never blocks, never raises."""
        if len(self._queue) >= self._settings.max_queue_events:
            self.stats.dropped += 1
            return
        self._queue.append(event)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued event is acknowledged or spooled; True if so in time."""
        self._idle.clear()
        return self._idle.wait(_wait_limit(timeout_s)) if self._thread.is_alive() else False

    def close(self, timeout_s: float) -> None:
        """Deliver what is left within `timeout_s`, then spool what is still unacknowledged
        (which takes as long as the backlog needs, at most `SPILL_LIMIT_S`) and stop the thread."""
        self._close_deadline = time.monotonic() + check_timeout(timeout_s)
        self._closing = True
        self._thread.join(_wait_limit(timeout_s + SPILL_LIMIT_S + 1.0))

    @property
    def spooling(self) -> bool:
        return self._spool is not None

    # -- the sender thread ---------------------------------------------------------------
    def _run(self) -> None:
        context = zmq.Context()
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.IMMEDIATE, 1)  # fail fast instead of queueing for no peer
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, self._settings.window_batches * 2)
        try:
            if not configure_client(socket, self._endpoint):
                _log.warning(
                    "stagewatch: %s needs CURVE keys (STAGEWATCH_CURVE_SERVER_KEY and "
                    "STAGEWATCH_CURVE_CLIENT_KEY); events are spooled",
                    self._endpoint,
                )
        except (OSError, ValueError) as error:
            _log.warning("stagewatch: cannot load CURVE keys (%s); events are spooled", error)
        socket.connect(self._endpoint)
        self._socket = socket
        # While connecting, IMMEDIATE refuses sends as if no daemon were there. Wait a little
        # for the connection, except when the daemon's ipc socket file does not even exist.
        self._connect_deadline = time.monotonic() + self._settings.connect_grace_s
        socket_file = ipc_path(self._endpoint)
        if socket_file is not None and not socket_file.exists():
            self._connect_deadline = 0.0
        try:
            while not self._step():
                pass
        finally:
            try:
                self._spool_what_is_left()
            except Exception as error:
                self._count_internal_error(error)
            if self._spool is not None:
                self._spool.release()  # the daemon ingests what is left
                self._spool = None
            socket.close(0)
            context.term()
            self._idle.set()

    def _step(self) -> bool:
        """One turn of the loop; True when the sender should stop."""
        try:
            self._receive_acks(self._settings.poll_interval_s)
            now = time.monotonic()
            self._maybe_heartbeat(now)
            if self._spool is None:
                self._send_queue(now)
            else:
                self._spool_queue()
                self._drain_spool(now)
            self._check_ack_timeout(now)
            done = not self._queue and not self._inflight and not self._held and self._spool is None
            if done or (self._spool is not None and not self._queue and not self._inflight):
                self._idle.set()
            if self._closing:
                # Everything is on disk and the daemon does not answer: no point waiting.
                parked = self._spool is not None and self._unreachable and not (self._queue or self._held)
                return done or parked or now >= self._close_deadline
        except Exception as error:
            self._count_internal_error(error)
            time.sleep(self._settings.poll_interval_s)
            # A step that fails every time must not hold the close past its deadline.
            return self._closing and time.monotonic() >= self._close_deadline
        return False

    def _count_internal_error(self, error: BaseException) -> None:
        self.stats.internal_errors += 1
        if self.stats.internal_errors == 1:
            _log.warning("stagewatch sender error (events are kept): %r", error, exc_info=error)

    def _receive_acks(self, timeout_s: float) -> None:
        if not self._socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            return
        while True:
            try:
                frame = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            batch = self._inflight.pop(unpack_ack(frame), None)  # type: ignore[arg-type]
            if batch is None:
                continue
            self._unreachable = False
            self.stats.acked_events += len(batch.payloads)
            if batch.spool_end is not None:
                self._acked_offset = max(self._acked_offset, batch.spool_end)

    def _maybe_heartbeat(self, now: float) -> None:
        if now < self._next_heartbeat or self._closing:
            return
        self._next_heartbeat = now + self._settings.heartbeat_interval_s
        if self._spool is None:  # while spooling, resent batches prove we are alive
            event = self._heartbeat()
            if event is not None:
                self._queue.append(event)

    def _take_batch(self) -> list[bytes]:
        """Number and pack up to a batch of queued events.

        A queued item is an event dict, or a callable that builds one (None: nothing to send),
        so the pipeline's thread does not pay for building events.
        """
        queue, size = self._queue, 0
        payloads = []
        for _ in range(min(len(queue), self._settings.batch_max_events)):
            item = queue.popleft()
            event = item() if callable(item) else item
            if event is None:
                continue
            event["seq"] = self._seq = self._seq + 1
            payloads.append(pack_event(event))
            size += len(payloads[-1])
            if size >= self._settings.batch_max_bytes:
                break
        self.stats.emitted += len(payloads)
        return payloads

    def _send(self, payloads: list[bytes], spool_end: int | None) -> bool:
        batch_no = next(self._batch_numbers)
        try:
            self._socket.send(pack_batch(self.client_id, batch_no, payloads), zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._inflight[batch_no] = _Inflight(time.monotonic(), payloads, spool_end)
        self.stats.batches_sent += 1
        return True

    def _send_queue(self, now: float) -> None:
        if self._held and now < self._next_probe:
            return  # the disk refused them a moment ago: retry at the next probe
        while (self._held or self._queue) and len(self._inflight) < self._settings.window_batches:
            if now < self._connect_deadline and not self._connected():
                return  # still connecting: the events wait in the queue
            payloads = self._held.popleft() if self._held else self._take_batch()
            if not self._send(payloads, None):
                self._start_spooling(payloads, now)
                return

    def _connected(self) -> bool:
        """True once the socket has a peer (a send would not be refused)."""
        return bool(self._socket.getsockopt(zmq.EVENTS) & zmq.POLLOUT)

    def _start_spooling(self, unsent: list[bytes], now: float) -> None:
        """Move what is unacknowledged (in order) and `unsent` to a new spool file."""
        batches = [batch.payloads for batch in self._inflight.values() if batch.spool_end is None]
        batches += [*self._held, unsent] if unsent else list(self._held)
        self._inflight = {n: b for n, b in self._inflight.items() if b.spool_end is not None}
        self._held.clear()
        self._unreachable = True
        self._next_probe = now + self._settings.probe_interval_s
        if self._spool is None:
            try:
                self._new_spool()
            except OSError as error:
                self._disk_refused(error, batches)
                return
        self._spool_batches(batches)

    def _new_spool(self) -> None:
        self._spool = SpoolFile(self._spool_dir, f"{self.client_id}-{next(self._spool_numbers)}")
        self._read_offset = self._acked_offset = 0
        self._appends.clear()  # offsets of the file before

    def _spool_batches(self, batches: list[list[bytes]]) -> None:
        """Append batches to the spool; what the disk refuses stays in memory, in order."""
        for index, payloads in enumerate(batches):
            try:
                self._append_to_spool(payloads)
            except OSError as error:
                self._disk_refused(error, batches[index:])
                return

    def _disk_refused(self, error: OSError, batches: list[list[bytes]]) -> None:
        self.stats.spool_errors += 1
        if self.stats.spool_errors == 1:
            _log.warning("stagewatch cannot spool to %s (%s); events stay in memory", self._spool_dir, error)
        self._held.extend(payloads for payloads in batches if payloads)

    def _append_to_spool(self, payloads: list[bytes]) -> None:
        if payloads and self._spool is not None:
            offset = self._spool.size
            self._spool.append(payloads)
            self._appends.append((offset, payloads))
            self.stats.spooled_events += len(payloads)

    def _spool_what_is_left(self) -> None:
        """At the end (the deadline, or nothing left): every event not acknowledged goes to the
        spool, the queue included, in order. What the disk refuses is counted exactly
        (`stats.lost_at_exit`), said once, and told to each run it belonged to by an
        `events_lost` event in the spool (the daemon puts it in the run's audit trail)."""
        loss = _Loss()
        spill_deadline = time.monotonic() + SPILL_LIMIT_S
        for payloads in self._unacknowledged():
            if loss.reason is None and time.monotonic() > spill_deadline:
                loss.reason = f"spooling them took over {SPILL_LIMIT_S:.0f} s"
            if loss.reason is None:
                payloads, loss.reason = self._spool_what_fits(payloads)
            if loss.reason is not None:
                loss.add(payloads)
        if loss.reason is not None:
            self._report_loss(loss)

    def _unacknowledged(self) -> Iterator[list[bytes]]:
        """In order: batches sent but not acknowledged, batches the disk refused, the queue."""
        inflight = [batch.payloads for batch in self._inflight.values() if batch.spool_end is None]
        self._inflight.clear()  # the spooled ones are on disk already
        yield from inflight
        while self._held:
            yield self._held.popleft()
        while self._queue:
            payloads = self._take_batch()
            if payloads:
                yield payloads

    def _spool_what_fits(self, payloads: list[bytes]) -> tuple[list[bytes], str | None]:
        """Spool the longest prefix of `payloads` that the disk takes (halving a refused batch);
        the rest, and why it was refused (None when all went)."""
        reason = self._try_spool(payloads)
        if reason is None or len(payloads) == 1:
            return ([] if reason is None else payloads), reason
        half = len(payloads) // 2
        refused, reason = self._spool_what_fits(payloads[:half])
        if reason is not None:
            return refused + payloads[half:], reason
        return self._spool_what_fits(payloads[half:])

    def _try_spool(self, payloads: list[bytes]) -> str | None:
        """Append to the spool (made if need be); None, or why the disk refused."""
        try:
            if self._spool is None:
                self._new_spool()
            self._append_to_spool(payloads)
        except OSError as error:
            return f"the spool in {self._spool_dir} refused them: {error}"
        return None

    def _report_loss(self, loss: _Loss) -> None:
        recorded = self._write_loss_events(loss)
        self.stats.lost_at_exit = loss.events
        if loss.events:
            where = (
                "counted in the run's audit trail (events_lost)" if recorded else "the run's trail could not be told"
            )
            _log.warning(
                "stagewatch: %d events could be neither delivered nor spooled at shutdown (%s); %s",
                loss.events,
                loss.reason,
                where,
            )

    def _write_loss_events(self, loss: _Loss) -> bool:
        """Spool the refused run ends and one `events_lost` per run; when the disk refuses
        those too, give up the spill's last records to make room (counted as lost as well)."""
        first_seq = self._seq + 1
        for attempt in range(2):
            words = [*loss.run_ends, *self._loss_events(loss, first_seq)]
            if self._try_spool(words) is None:
                self._seq = first_seq + len(loss.by_run) - 1
                self.stats.emitted += len(loss.by_run)
                return True
            if attempt or not self._make_room(loss, len(encode_records(words)) + 64):
                break
        for payload in loss.run_ends:  # lost after all
            loss.by_run[event_type_and_run(payload)[1]] += 1
        return False

    def _loss_events(self, loss: _Loss, first_seq: int) -> list[bytes]:
        now, payloads = representable_ns(time.time_ns()), []
        for seq, (run_id, count) in enumerate(sorted(loss.by_run.items()), first_seq):
            event = events_lost(self.client_id, run_id, now, events=count, reason=loss.reason or "")
            event["seq"] = seq
            payloads.append(pack_event(event))
        return payloads

    def _make_room(self, loss: _Loss, needed: int) -> bool:
        """Cut records (never a run's end) off the spool's latest appends until `needed` bytes
        are free; they join the loss. Those the spill made, and those spooled as they came (a
        slow stream with no daemon fills the disk before the end), but never what was read to be
        sent: the daemon may have it. False when those appends cannot free enough."""
        if self._spool is None:
            return False
        picked: list[tuple[int, list[bytes]]] = []
        given_up: list[bytes] = []
        freed = 0
        while freed < needed and self._appends and self._appends[-1][0] >= self._read_offset:
            offset, payloads = self._appends.pop()
            picked.append((offset, payloads))
            for payload in reversed(payloads):
                if freed >= needed:
                    break
                if event_type_and_run(payload)[0] != RUN_FINISHED:
                    given_up.append(payload)
                    freed += len(encode_records([payload]))
        if freed < needed:
            self._appends.extend(reversed(picked))
            return False
        self._spool.truncate(picked[-1][0])
        tail = [payload for _, payloads in reversed(picked) for payload in payloads]
        self.stats.spooled_events -= len(tail)
        cut = {id(payload) for payload in given_up}
        loss.add([payload for payload in tail if id(payload) in cut])
        kept = [payload for payload in tail if id(payload) not in cut]
        if kept and self._try_spool(kept) is not None:
            loss.add(kept)
        return True

    def _spool_queue(self) -> None:
        if self._held:  # the disk refused these: they go first, or nothing goes
            held = list(self._held)
            self._held.clear()
            self._spool_batches(held)
        while self._queue and not self._held:
            self._spool_batches([self._take_batch()])

    def _drain_spool(self, now: float) -> None:
        spool = self._spool
        assert spool is not None
        if not self._inflight and now < self._next_probe:
            return
        # One batch probes a daemon that has not answered yet; after an ack, a full window.
        limit = self._settings.window_batches if self._acked_offset or self._inflight else 1
        while len(self._inflight) < limit and self._read_offset < spool.size:
            payloads, end = spool.read_from(self._read_offset, self._settings.batch_max_events)
            if not payloads:
                self._read_offset = spool.size  # an unreadable tail: the daemon will report it
                break
            if not self._send(payloads, end):
                self._next_probe = now + self._settings.probe_interval_s
                self._unreachable = True
                return
            self._read_offset = end
        if self._read_offset >= spool.size and not self._inflight and self._acked_offset >= spool.size:
            spool.delete()
            self._spool = None

    def _check_ack_timeout(self, now: float) -> None:
        if not self._inflight:
            return
        oldest = next(iter(self._inflight.values()))
        if now - oldest.sent_at < self._settings.ack_timeout_s:
            return
        if self._spool is None:
            self._start_spooling([], now)
        else:  # the daemon went away while we resent the spool: start over from the last ack
            self._inflight.clear()
            self._unreachable = True
            self._read_offset = self._acked_offset
            self._next_probe = now + self._settings.probe_interval_s


def check_timeout(timeout_s: float) -> float:
    """`timeout_s` if it is a number of seconds >= 0 (math.inf: as long as it takes)."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise TypeError(f"expected timeout_s as a number of seconds, got {type(timeout_s).__name__}")
    if not timeout_s >= 0:  # NaN too
        raise ValueError(f"expected timeout_s >= 0 seconds, got {timeout_s!r}")
    return timeout_s


def _wait_limit(timeout_s: float) -> float | None:
    # A wait longer than the platform's time_t raised OverflowError: infinity means no limit.
    return None if timeout_s == math.inf else timeout_s


def safe_close(sender: Sender | None, timeout_s: float) -> None:
    if sender is not None:
        with contextlib.suppress(Exception):
            sender.close(timeout_s)


def start_without_signals(thread: threading.Thread) -> None:
    """Start `thread` with every signal blocked in it (a thread inherits its creator's mask).

    The kernel may hand a process-wide signal (SIGTERM, SIGINT) to any thread that does not
    block it. Taken by this thread, the signal only flags Python's handler for the main
    thread, which, blocked in a lock (a Pool worker waiting for tasks), is never woken to
    run it: Pool.terminate() then hung forever joining such a worker (1 run in ~3 here).
    Blocked here, the signal goes to the main thread and interrupts its wait.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
