"""Ingest: bind (daemon/ingest/_sockets.py), then decode → de-duplicate → append to the event log → fsync → acknowledge.

Each turn takes a group of batches from the ROUTER socket, appends every new valid event
to the log, fsyncs once (group commit), acknowledges the batches, hands the events to the
projection (`on_durable`) and forwards them to live-feed subscribers. Invalid events go to
quarantine; nothing here raises on input.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq
from loguru import logger

from stagewatch import _protocol as protocol
from stagewatch._protocol import DAEMON_CLIENT_ID, DAEMON_EVENT_TYPES, pack_ack, pack_event
from stagewatch._records import ScanStats, encode_records
from stagewatch._spool import claim_spool_files, spool_owner
from stagewatch.daemon.base._disk import DiskStatus
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._stats import DaemonStats, WriteErrors
from stagewatch.daemon.ingest._decode import Rejected, decode_batch, decode_event
from stagewatch.daemon.ingest._dedup import Deduplicator
from stagewatch.daemon.ingest._eventlog import EventLog
from stagewatch.daemon.ingest._quarantine import Quarantine
from stagewatch.daemon.ingest._sockets import IngestSettings, Sockets
from stagewatch.daemon.projection._schema import validate_event

MAX_BOUND_CLIENTS = 100_000
# A `received` marker goes into the log before a group when the last one is this old: receive
# times are known to a second (retention and clock skew need minutes), at most one small
# record a second.
RECEIVED_MARK_INTERVAL_NS = 1_000_000_000
REPLAY_FLUSH_EVENTS = 100_000


@dataclass
class Group:
    """Events taken in one turn, before they are durable."""

    payloads: list[bytes] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    acks: list[tuple[bytes, int]] = field(default_factory=list)
    keys: set[tuple[str, int]] = field(default_factory=set)


def _impersonation(event: Any, sender: str) -> str:
    if event.type in DAEMON_EVENT_TYPES or event.client_id == DAEMON_CLIENT_ID:
        return f"only the daemon writes {event.type} and events as 'daemon'"
    return f"an event of client {event.client_id!r} in a batch of client {sender!r}"


class Ingest:
    def __init__(
        self,
        home: DaemonHome,
        settings: IngestSettings,
        log: EventLog,
        disk: DiskStatus,
        stats: DaemonStats,
        write_error: WriteErrors,
        quarantine: Quarantine,
        on_durable: Callable[[Sequence[Any], Sequence[int]], None],
    ) -> None:
        self.home = home
        self.settings = settings
        self.log = log
        self.disk = disk
        self.stats = stats
        self.write_error = write_error
        self.on_durable = on_durable  # each group's events once they are in the log, with their positions
        self.dedup = Deduplicator()
        self.quarantine = quarantine
        self.last_seen: dict[str, float] = {}  # client -> monotonic time of its last batch
        self.daemon_seq = 0  # numbers the daemon's own events (client_lost, received)
        self._marked: tuple[int, bool] | None = None  # the last `received` marker: (its time, spooled)
        self.owners: OrderedDict[str, bytes] = OrderedDict()  # client id -> its connection (or CURVE key)
        self.sockets = Sockets(home, settings)

    # -- the sockets (daemon/ingest/_sockets.py) ------------------------------------------
    def bind(self) -> None:
        self.sockets.bind()

    def close(self) -> None:
        self.sockets.close()

    def wait(self, timeout_ms: int) -> bool:
        return self.sockets.wait(timeout_ms)

    def publish(self, topic: bytes, body: bytes) -> None:
        self.sockets.publish(topic, body)

    # -- the path of an event ------------------------------------------------------------
    def receive(self, now: float) -> None:
        """Take what the socket holds (up to a group's worth) and commit it."""
        group = Group()
        while len(group.payloads) < self.settings.max_group_events:
            try:
                frames = self.sockets.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if len(frames) != 2:  # not one of ours
                self.quarantine.keep([Rejected(f"expected 2 frames, got {len(frames)}", b"")])
                continue
            identity, frame = frames[0].bytes, frames[1]
            batch = decode_batch(frame.bytes)
            if isinstance(batch, Rejected):
                self.quarantine.keep([batch])
                continue
            principal = self.sockets.principal(identity, frame)
            if not self._owned_by(batch.client_id, principal):
                reason = f"client id {batch.client_id!r} is bound to another connection: batch refused"
                self.quarantine.keep([Rejected(reason, frame.bytes[:4096], batch.client_id)])
                continue  # not acknowledged: a forger learns nothing and changes nothing
            self.last_seen[batch.client_id] = now
            self.stats.batches += 1
            self.take(group, batch.payloads, batch.client_id)
            group.acks.append((identity, batch.batch_no))
        self.commit(group)

    def _owned_by(self, client_id: str, principal: bytes) -> bool:
        """Bind a client id to the first connection (over TCP: the CURVE key) that uses it."""
        owner = self.owners.setdefault(client_id, principal)
        if len(self.owners) > MAX_BOUND_CLIENTS:
            self.owners.popitem(last=False)
        return owner == principal

    def take(self, group: Group, payloads: list[bytes], sender: str) -> None:
        """Add the new valid events among `payloads` to `group`; quarantine the invalid, and
        any that claims another client than its `sender` (or the daemon's own events)."""
        rejected = []
        for payload in payloads:
            event = decode_event(payload)
            if not isinstance(event, Rejected) and (event.client_id != sender or event.type in DAEMON_EVENT_TYPES):
                event = Rejected(_impersonation(event, sender), payload[:4096], sender)
            if isinstance(event, Rejected):
                rejected.append(event)
                continue
            key = (event.client_id, event.seq)
            if key in group.keys or self.dedup.seen(*key):
                self.stats.duplicates += 1
                continue
            group.keys.add(key)
            group.payloads.append(payload)
            group.events.append(event)
        self.quarantine.keep(rejected)

    def next_daemon_seq(self) -> int:
        self.daemon_seq += 1
        return self.daemon_seq

    def _mark_received(self, group: Group, spooled: bool) -> None:
        """Put a `received` marker (the daemon's clock now) before the group's events, unless the
        last one is recent and of the same kind: the log then says when each event arrived, and
        a rebuild reads the same receive times as the live fold did."""
        now_ns = time.time_ns()
        last = self._marked
        if last is not None and last[1] == spooled and 0 <= now_ns - last[0] < RECEIVED_MARK_INTERVAL_NS:
            return
        marker = protocol.received(self.next_daemon_seq(), now_ns, spooled=spooled)
        group.payloads.insert(0, pack_event(marker))
        group.events.insert(0, validate_event(marker))
        self._marked = (now_ns, spooled)

    def commit(self, group: Group, spooled: bool = False, below_floor: bool = False) -> bool:
        """Make the group durable, acknowledge it, project it. False if the disk refused.
        `spooled`: its events come from a spool file, not live from a client. `below_floor`:
        written even below the free-space floor (retention's few records, which come before
        the removal that frees space)."""
        lsns: list[int] = []
        if group.payloads and self.disk.below_floor and not below_floor:
            # Below the floor nothing new is written: clients keep their events (unacked).
            self.write_error("{}", OSError(28, self.disk.problems[0]))
            return False
        records = b""  # the log's framing of the group, and the live feed's message
        if group.payloads:
            marked = self._marked
            self._mark_received(group, spooled)
            records = encode_records(group.payloads)
            try:
                lsns = self.log.append(group.payloads, records)
                self.log.sync()
            except OSError as error:
                self.write_error("cannot write the event log ({}); batches stay unacknowledged", error)
                if self._marked is not marked:  # the marker went nowhere: the retry writes its own
                    del group.payloads[0], group.events[0]
                    self._marked = marked
                return False
            self.dedup.mark_events(group.events)
            self.stats.accepted += len(group.payloads)
        # Durable now: acknowledge before folding, so a client waits for the fsync, not for
        # the projection of the whole group.
        for identity, batch_no in group.acks:
            with contextlib.suppress(zmq.ZMQError):
                self.sockets.router.send_multipart([identity, pack_ack(batch_no)], zmq.NOBLOCK)
        if group.payloads:
            self.on_durable(group.events, lsns)
            # To live-feed subscribers as one message, [b"events", the log's records] (heartbeats
            # too: re-packing the group without them cost 4% of the loop). A slow subscriber
            # misses messages; ingest never waits.
            self.publish(b"events", records)
        return True

    def replay(
        self, start_lsn: int, flush: Callable[[int], object], progress: Callable[[int, int], object]
    ) -> tuple[int, ScanStats]:
        """Hand the logged events from `start_lsn` on to `on_durable` again, de-duplicated as
        when they came; `flush(event time)` every REPLAY_FLUSH_EVENTS of them, and `progress(bytes
        replayed, bytes to replay)`. The events replayed, and what the log's scan met."""
        scan, replayed, end_lsn = ScanStats(), 0, self.log.end_lsn
        for lsn, payload in self.log.read(start_lsn, scan):
            event = decode_event(payload)
            if isinstance(event, Rejected):
                continue
            if self.dedup.seen(event.client_id, event.seq):
                # Ingest never logs an event twice: a record seen again is a copied segment.
                self.stats.replay_duplicates += 1
                continue
            self.dedup.mark(event.client_id, event.seq)
            if event.client_id == DAEMON_CLIENT_ID:  # written after the checkpoint: numbered past it
                self.daemon_seq = max(self.daemon_seq, event.seq)
            self.on_durable((event,), (lsn,))
            replayed += 1
            if replayed % REPLAY_FLUSH_EVENTS == 0:
                flush(event.ts_ns)
                logger.info("replayed {:,} events (lsn {:,} of {:,})", replayed, lsn, end_lsn)
                progress(lsn - start_lsn, end_lsn - start_lsn)
        progress(end_lsn - start_lsn, end_lsn - start_lsn)
        return replayed, scan

    def ingest_spools(self) -> None:
        """Ingest spool files left by clients that have exited, then delete them."""
        for path, payloads, scan in claim_spool_files(self.home.spool):
            # In pieces: a big spool on a nearly full disk goes in as far as there is room;
            # what went in is skipped as a duplicate when the rest is retried.
            committed = 0
            for start in range(0, len(payloads), self.settings.max_group_events):
                group = Group()
                self.take(group, payloads[start : start + self.settings.max_group_events], spool_owner(path))
                if not self.commit(group, spooled=True):
                    return
                committed += len(group.payloads)
            if scan.corrupt_regions or scan.tail_bytes:
                logger.warning(
                    "spool {}: {} damaged region(s), {} tail bytes skipped",
                    path.name,
                    scan.corrupt_regions,
                    scan.tail_bytes,
                )
            self.stats.spool_files += 1
            self.stats.spool_events += committed
            path.unlink(missing_ok=True)
