"""Runs and stages: what a pipeline touches. The hot path stamps, measures and enqueues."""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import inspect
import itertools
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from stagewatch import _protocol as protocol
from stagewatch._environment import environment
from stagewatch._gpu import GpuMemory, gpu_values
from stagewatch._home import Home, artifact_relpath, resolve_endpoint
from stagewatch._memory import BYTES_PER_MB, make_rss_tracker, memory_limit_bytes, memory_warn_fraction
from stagewatch._names import check_name, check_run_id, counted_name, sample_name
from stagewatch._saver import write_artifact
from stagewatch._transport import Sender, SenderSettings, check_timeout, safe_close, start_without_signals

_log = logging.getLogger("stagewatch")
F = TypeVar("F", bound=Callable[..., Any])
MAX_TRACEBACK_CHARS = 32 * 1024
DEFAULT_FLUSH_TIMEOUT_S = 5.0


class _Process:
    """Everything stagewatch holds per process; rebuilt in a forked child."""

    def __init__(self, home: Home, endpoint: str, settings: SenderSettings) -> None:
        self.home = home
        self.endpoint = endpoint
        self.client_id = uuid.uuid4().hex
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.spans = itertools.count(1)
        self.rss = make_rss_tracker()
        self.gpu = GpuMemory()
        self.memory_limit, self.memory_limit_source = memory_limit_bytes()
        self.memory_warn_bytes = self.memory_limit * memory_warn_fraction()
        self.sender = Sender(self.client_id, endpoint, home.spool, settings, self._heartbeat)

    def _heartbeat(self) -> dict | None:
        run = current_run()  # read once: the sender's thread; the pipeline's may end the run meanwhile
        if run is None:
            return None
        # The last reading a crashed stage will be left with (an OOM kill gives no warning).
        rss_mb = self.rss[0].current() / BYTES_PER_MB if self.rss is not None else None
        return protocol.heartbeat(self.client_id, run.id, run.now_ns(), rss_mb=rss_mb)


_process: _Process | None = None
_forked = False  # this process is a fork of one that used stagewatch
_closing: Sender | None = None  # the sender that shutdown() is delivering right now
_runs: list[Run] = []  # active runs; a forked child inherits the list
_process_lock = threading.Lock()
_current_stage: contextvars.ContextVar[Stage | None] = contextvars.ContextVar("stagewatch_stage", default=None)


def _process_for(home: Home, endpoint: str, settings: SenderSettings) -> _Process:
    global _process
    with _process_lock:
        if _process is None or _process.pid != os.getpid():
            if sys.is_finalizing():
                # A thread started now never runs, and its start waited forever with every
                # signal blocked: an unkillable hang, for a generator left open at exit.
                raise RuntimeError("the interpreter is exiting: this event comes after stagewatch.shutdown()")
            _register_process_hooks()
            _process = _Process(home, endpoint, settings)
            _register_child_exit()
        elif (_process.home, _process.endpoint) != (home, endpoint):
            raise ValueError(
                f"expected one stagewatch home per process ({_process.home}), got {home}; "
                "call stagewatch.shutdown() first to switch"
            )
        return _process


def _after_fork_in_child() -> None:
    """The child keeps its runs (a copy of `_runs`) but must not touch the parent's sender:
    the next event makes it a process state of its own (new client id, thread, socket)."""
    global _process_lock, _process, _forked
    _process_lock = threading.Lock()
    _forked = True
    if _process is not None:
        _process.sender = _ForkedAway()  # the parent's thread does not exist here
    _process = None


def _register_child_exit() -> None:
    """Deliver a forked worker's events however it ends.

    multiprocessing children end with os._exit, which skips atexit but runs Finalize
    callbacks; and Pool.terminate() ends workers with SIGTERM, so a worker whose SIGTERM
    is still the default one first flushes (for at most a second), then dies as it would have.
    """
    if not _forked:
        return
    if "multiprocessing" in sys.modules:
        from multiprocessing import util

        util.Finalize(None, shutdown, exitpriority=100)
    is_main = threading.current_thread() is threading.main_thread()
    if is_main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _flush_then_die)
        _watch_for_a_stranded_sigterm()


# Set when _flush_then_die runs: the main thread acted on SIGTERM.
_sigterm_handled = threading.Event()
STRANDED_AFTER_S = 0.5  # a SIGTERM the main thread has not acted on by then never will be


def _watch_for_a_stranded_sigterm() -> None:
    """A Python handler runs only when the main thread next runs Python: a SIGTERM that lands
    just before the main thread blocks in a C wait (a Pool worker taking its next task, on a
    lock Pool.terminate() keeps) is stranded, and the worker, which SIG_DFL would have ended,
    waits forever (Pool.terminate() with it). The signal also goes to a wakeup fd (written by
    the C handler in any thread); a thread of ours reads it and, if the main thread has not
    acted in STRANDED_AFTER_S, flushes and ends the process as SIGTERM would have. Skipped when
    the process already has a wakeup fd (an event loop's): that one is not ours to take."""
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    if signal.set_wakeup_fd(writer, warn_on_full_buffer=False) != -1:  # someone else's: theirs back
        signal.set_wakeup_fd(signal.set_wakeup_fd(-1))
        os.close(reader)
        os.close(writer)
        return
    watcher = threading.Thread(target=_end_if_stranded, args=(reader,), name="stagewatch-sigterm", daemon=True)
    start_without_signals(watcher)


def _end_if_stranded(reader: int) -> None:
    while signal.SIGTERM not in (received := os.read(reader, 64)):
        if not received:  # the pipe closed under us (a worker that closes its fds): nothing to watch
            return
    if _sigterm_handled.wait(STRANDED_AFTER_S):
        return
    shutdown(timeout_s=1.0)
    _die_by(signal.SIGTERM)


def _die_by(signum: int) -> None:
    """End the process as `signum`'s default action would, from any thread (Python's
    signal.signal is the main thread's only: the disposition is reset through libc)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
        libc.signal(signum, None)  # SIG_DFL
        os.kill(os.getpid(), signum)
        time.sleep(1)  # delivered to a thread that does not block it
    finally:
        os._exit(128 + signum)


def _flush_then_die(signum: int, frame: object) -> None:
    _sigterm_handled.set()
    shutdown(timeout_s=1.0)
    if _closing is not None:  # SIGTERM came while an exit handler was delivering: let it finish
        safe_close(_closing, 1.0)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_hooks_registered = False


def _register_process_hooks() -> None:
    """At the first run, not at import: a process that only imports stagewatch (the daemon,
    the dashboard, a tool) gets no fork or exit hook. Called with `_process_lock` held."""
    global _hooks_registered
    if not _hooks_registered:
        _hooks_registered = True
        os.register_at_fork(after_in_child=_after_fork_in_child)
        atexit.register(shutdown)


class Stage:
    """One execution of a pipeline stage; a context manager that times and measures it.

    A user exception inside the block is recorded as `stage_failed` and re-raised unchanged.
    """

    # The hot path only takes readings and enqueues two bound methods; the sender thread
    # builds the events from them. A start whose stage has already ended by then is not
    # sent at all: the end event carries everything it would have said.
    __slots__ = (
        "_client",
        "_elapsed_ns",
        "_end_ts",
        "_error",
        "_gpu",
        "_gpu_peak",
        "_parent",
        "_parent_stage",
        "_rss",
        "_rss_end",
        "_rss_peak",
        "_t0",
        "_token",
        "_ts",
        "input_path",
        "name",
        "outputs",
        "run",
        "sample_id",
        "span",
    )

    def __init__(self, run: Run, name: str, input_path: str | None, sample_id: str | None) -> None:
        self.run = run
        self.name = name
        self.input_path = input_path
        self.sample_id = sample_id
        self.outputs: list[str] = []
        self.span = 0
        self._end_ts = 0

    def __enter__(self) -> Stage:
        try:
            self._begin()
        except Exception as error:
            _internal_error(error)
        return self

    def _begin(self) -> None:
        process = _process_for_run(self.run)
        self._client = process.client_id
        self.span = next(process.spans)
        parent = current_stage()
        self._parent_stage = parent
        self._parent = parent.span if parent is not None else None
        self._token = _current_stage.set(self)
        rss = process.rss
        self._rss = rss[1].begin() if rss is not None else None
        self._gpu = process.gpu.begin()
        self._ts = self.run.now_ns()
        process.sender.emit(self._start_event)
        self._t0 = time.monotonic_ns()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> bool:
        elapsed_ns = time.monotonic_ns() - self._t0 if self.span else 0
        if isinstance(error, GeneratorExit):  # its generator was closed (a `break` in the consumer): no failure
            error = None
        try:
            if self.span:
                self._finish(elapsed_ns, error)
        except Exception as internal:
            _internal_error(internal)
        return False  # never swallow the user's exception

    def _finish(self, elapsed_ns: int, error: BaseException | None) -> None:
        process = _process_for_run(self.run)
        self._rss_peak = self._rss_end = None
        if process.rss is not None and self._rss is not None:
            self._rss_peak, self._rss_end = process.rss[1].end(self._rss[0])
        self._gpu_peak = process.gpu.end(self._gpu)
        self._elapsed_ns = elapsed_ns
        self._error = None
        if error is not None:  # formatted now: keeping the exception would keep its frames alive
            self._error = (
                type(error).__qualname__,
                str(error)[:4096],
                "".join(traceback.format_exception(error))[-MAX_TRACEBACK_CHARS:],
            )
            self.run._failed_stages += 1
            _mark_failed_in(error, self.name, self.sample_id)
        self._end_ts = self.run.now_ns()  # from here on `current_stage()` passes over this stage
        process.sender.emit(self._end_event)
        if self._rss_peak is not None and self._rss_peak > process.memory_warn_bytes:
            process.sender.emit(self._memory_warning)
        self._leave_context()

    def _leave_context(self) -> None:
        """Make the enclosing stage current again, in whatever context this stage ends.

        A stage inside a generator may end in another context than the one it began in: an
        async generator left with `break` is closed by the event loop in a task of its own,
        a generator closed (or collected) in another thread runs its `finally` there. The
        token belongs to the context that set it and can be reset only there. Elsewhere,
        where this stage is current, its nearest open ancestor becomes current; the context
        it began in (out of reach from here) still names it, and `current_stage()` passes
        over it there because it has ended.
        """
        try:
            _current_stage.reset(self._token)
        except ValueError:  # "created in a different Context"
            if _current_stage.get() is self:
                _current_stage.set(_open_stage(self._parent_stage))

    def _memory_warning(self) -> dict:
        process = _process_for_run(self.run)
        peak_mb, limit_mb = self._rss_peak / BYTES_PER_MB, process.memory_limit / BYTES_PER_MB
        message = (
            f"stage {self.name!r} peaked at {peak_mb:.0f} MB, {peak_mb / limit_mb:.0%} of the "
            f"{limit_mb:.0f} MB memory limit ({process.memory_limit_source})"
        )
        extra = {"rss_peak_mb": peak_mb, "limit_mb": limit_mb, "limit_source": process.memory_limit_source}
        return protocol.log(
            self._client,
            self.run.id,
            self._end_ts,
            level="WARNING",
            message=message,
            stage=self.name,
            sample_id=self.sample_id,
            logger="stagewatch.memory",
            extra=extra,
        )

    def _start_event(self) -> dict | None:
        if self._end_ts:
            return None
        return protocol.stage_started(self._client, self.run.id, self._ts, **self._identity())

    def _identity(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "span": self.span,
            "parent_span": self._parent,
            "sample_id": self.sample_id,
            "input_path": self.input_path,
        }

    def _end_event(self) -> dict:
        rss_start = rss_peak = rss_end = None
        if self._rss is not None and self._rss_peak is not None:
            start = self._rss[1]
            rss_start, rss_end = start / BYTES_PER_MB, self._rss_end / BYTES_PER_MB
            rss_peak = max(self._rss_peak, self._rss_end, start) / BYTES_PER_MB
        gpu_peak, gpu_source, gpu_devices = gpu_values(self._gpu_peak)
        return protocol.stage_finished(  # keywords spelled out: merging dicts here cost a third
            self._client,
            self.run.id,
            self._end_ts,
            stage=self.name,
            span=self.span,
            parent_span=self._parent,
            sample_id=self.sample_id,
            input_path=self.input_path,
            start_ts_ns=self._ts,
            duration_ms=self._elapsed_ns / 1e6,
            output_paths=self.outputs,
            rss_start_mb=rss_start,
            rss_peak_mb=rss_peak,
            rss_end_mb=rss_end,
            gpu_peak_mb=gpu_peak,
            gpu_source=gpu_source,
            gpu_devices=gpu_devices,
            error=self._error,
        )

    def save(self, filename: str, value: Any) -> str | None:
        """Save a stage output under runs/{run_id}/stages/{stage}/{filename}.

        The extension picks the format: .png (HxW or HxWx3/4 uint8/uint16 array), .ply (Nx3
        points, a dict of per-point arrays such as {"points", "colors", "label"}, or an Open3D
        point cloud), .npy (any array), .json (JSON data). A file already there is never
        written over: where an earlier save of the run (in any process, or earlier in this
        execution) took the name, the output goes to the sample id before the extension
        (`overlay.frame_001.png`), else to a counter (`overlay.2.png`), said once per stage
        and name in the log. Returns the path written, relative to the home, or None if the
        disk refused the write (logged once, the pipeline goes on).
        """
        relpath = artifact_relpath(self.run.id, self.name, filename)
        process = _process_for_run(self.run)
        try:
            written = write_artifact(process.home.root / relpath, value, self._other_names(filename))
            if written.name != filename:
                self._say_renamed(filename, written.name, relpath in self.outputs)
                relpath = relpath[: -len(filename)] + written.name
            self.outputs.append(relpath)
            for warning in written.warnings:
                _log.warning("stagewatch: %s: %s", relpath, warning)
            event = protocol.artifact_saved(
                process.client_id,
                self.run.id,
                self.run.now_ns(),
                stage=self.name,
                span=self.span,
                path=relpath,
                kind=Path(filename).suffix.lower().lstrip("."),
                size_bytes=written.bytes,
                sample_id=self.sample_id,
                warnings=written.warnings,
            )
            process.sender.emit(event)
        except OSError as error:  # a full or read-only disk: the pipeline goes on
            _internal_error(error)
            return None
        return relpath

    def _other_names(self, filename: str) -> Iterator[str]:
        """The names a save of `filename` tries when it is taken (read only then): the sample's,
        then a counter from where this process's last save of the name left it, so that the
        n-th save of a name tries a name or two, not n."""
        named = sample_name(filename, self.sample_id)
        if named is not None:
            yield named
        counters, key = self.run._name_counters, (self.name, filename)
        for counter in itertools.count(counters.get(key, 2)):
            counters[key] = counter + 1
            yield counted_name(filename, counter)

    def _say_renamed(self, filename: str, written: str, by_this_execution: bool) -> None:
        key = (self.name, filename)
        if key in self.run._renames_said:
            return
        self.run._renames_said.add(key)
        saved_by = "this execution saved it already" if by_this_execution else "an earlier execution saved it"
        _log.warning(
            "stagewatch: %s saved %s again (%s): saved as %s; put the sample in the name to choose it",
            self.name,
            filename,
            saved_by,
            written,
        )

    def result(self, sample_id: str | None = None, prediction: Any = None) -> None:
        """Report this stage's prediction for one sample, to be judged against the run's golden dataset.

        Boxes travel inline: {"boxes": [[x, y, w, h], ...], "scores": [...], "labels": [...]}
        (labels are class ids or names). A class-index mask or per-point labels (an array) is
        saved as `{sample_id}.pred.npy`, and a point cloud with its labels (a dict with "points"
        and "label") as `{sample_id}.pred.ply`; the event carries the path. `sample_id`
        defaults to the stage's. Never raises into the pipeline.
        """
        try:
            self._result(sample_id or self.sample_id, prediction)
        except Exception as error:
            _internal_error(error)

    def _result(self, sample_id: str | None, prediction: Any) -> None:
        if sample_id is None:
            raise ValueError("stage.result() needs a sample id (or a stage started with sample_id=...)")
        check_name(sample_id, "sample id")
        path = None
        if hasattr(prediction, "__array_interface__") or (isinstance(prediction, dict) and "points" in prediction):
            suffix = "ply" if isinstance(prediction, dict) else "npy"
            path = self.save(f"{sample_id}.pred.{suffix}", prediction)
            if path is None:
                return
            prediction = None
        process = _process_for_run(self.run)
        event = protocol.sample_result(
            process.client_id,
            self.run.id,
            self.run.now_ns(),
            stage=self.name,
            sample_id=sample_id,
            path=path,
            prediction=protocol.bounded_json(prediction, protocol.MAX_PREDICTION_CHARS),
        )
        process.sender.emit(event)


def _process_for_run(run: Run) -> _Process:
    # No getpid() here (a syscall on the hot path): the fork hook clears `_process`.
    process = _process
    if process is None:
        process = _process_for(run._home, run.endpoint, run.settings)
    return process


class _ForkedAway:
    """Stands in for the parent's sender in a forked child, which must not use it."""

    def emit(self, event: dict) -> None:
        return None

    def close(self, timeout_s: float) -> None:
        return None


_FAILED_IN = "__stagewatch_failed_in__"
_MAX_CHAIN = 32  # exceptions followed through __cause__/__context__ (a cycle or a deep chain ends there)


def _mark_failed_in(error: BaseException, stage: str, sample_id: str | None) -> None:
    """Remember on the exception the stage (and sample) it failed first, the innermost one: a
    record logged where the pipeline catches it, outside every stage, still belongs there."""
    if getattr(error, _FAILED_IN, None) is None:
        with contextlib.suppress(AttributeError, TypeError):  # an exception type without a __dict__
            setattr(error, _FAILED_IN, (stage, sample_id))


def failed_in(error: BaseException | None) -> tuple[str, str | None] | None:
    """(stage, sample id) where `error`, or an exception it was raised from or while handling,
    failed a stage; None if none did."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(error))
        found = getattr(error, _FAILED_IN, None)
        if found is not None:
            return found
        error = error.__cause__ or error.__context__
    return None


_internal_errors = 0
_checked_stage_names: set[str] = set()


def _internal_error(error: BaseException) -> None:
    """Count a failure inside stagewatch; log the first one with its traceback."""
    global _internal_errors
    _internal_errors += 1
    if _internal_errors == 1:
        _log.warning("stagewatch internal error (the pipeline goes on): %r", error, exc_info=error)


def _environment() -> dict[str, Any]:
    """What the run starts on (client/_environment.py); {} if it cannot be read: the run still starts."""
    try:
        return protocol.bounded_json(environment(), protocol.MAX_CONFIG_CHARS)
    except Exception as error:  # never the pipeline's problem
        _internal_error(error)
        return {}


def _snapshot(config: Mapping[str, Any] | None) -> dict:
    """A JSON-safe copy of the pipeline's config within the wire's limits (a huge, deep or
    unserialisable one is replaced by a note saying so: the run still starts)."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"expected config as a mapping, got {type(config).__name__}")
    return protocol.bounded_json(dict(config), protocol.MAX_CONFIG_CHARS)


class Run:
    """One execution of a pipeline. Create with `stagewatch.init()`."""

    def __init__(
        self,
        pipeline: str,
        *,
        config: Mapping[str, Any] | None = None,
        dataset: str | os.PathLike[str] | None = None,
        home: str | os.PathLike[str] | None = None,
        endpoint: str | None = None,
        run_id: str | None = None,
        settings: SenderSettings | None = None,
    ) -> None:
        self.pipeline = check_name(pipeline, "pipeline name")
        self.id = check_run_id(run_id) if run_id is not None else str(uuid.uuid4())
        self._home = Home.resolve(home)
        self.home = self._home.root
        self.endpoint = resolve_endpoint(self._home, endpoint)
        self.settings = settings or SenderSettings()
        # Absolute: the daemon reads it, from its own working directory.
        self.dataset = os.path.abspath(os.fspath(dataset)) if dataset is not None else None
        self.finished = False
        self._failed_stages = 0
        self._name_counters: dict[tuple[str, str], int] = {}  # (stage, file name): the next counter to try
        self._renames_said: set[tuple[str, str]] = set()  # (stage, file name) whose rename the log has said
        self._owner_pid = os.getpid()
        self._t0, self._wall0 = time.monotonic_ns(), protocol.representable_ns(time.time_ns())
        snapshot = _snapshot(config)
        process = _process_for(self._home, self.endpoint, self.settings)
        _runs.append(self)
        process.sender.emit(
            protocol.run_started(
                process.client_id,
                self.id,
                self._wall0,
                pipeline=self.pipeline,
                config=snapshot,
                host=process.host,
                pid=process.pid,
                dataset=self.dataset,
                argv=sys.argv[:64],
                environment=_environment(),
            )
        )

    def now_ns(self) -> int:
        """The run's clock: the wall clock at its start plus the monotonic time since. A wall
        clock stepped during the run (NTP's first sync on a board that booted in 1970, a hand
        set) moves none of its stages: their starts, ends and the run's end stay on one
        timeline with their durations (the next run starts from the new wall clock)."""
        return self._wall0 + time.monotonic_ns() - self._t0

    def stage(
        self, name: str, *, input_path: str | os.PathLike[str] | None = None, sample_id: str | None = None
    ) -> Stage:
        """A context manager that records one execution of stage `name`."""
        if name not in _checked_stage_names:
            _checked_stage_names.add(check_name(name, "stage name"))
        if sample_id is not None:  # within the wire's limits, so the stage is never refused
            sample_id = protocol.bounded_text(sample_id if isinstance(sample_id, str) else str(sample_id))
        if input_path is not None:
            input_path = protocol.bounded_text(os.fspath(input_path))
        return Stage(self, name, input_path, sample_id)

    def instrument(self, target: Any, stages: Mapping[str, str] | Iterable[str]) -> Any:
        """Wrap methods of an existing object as stages, without editing its class.

        `stages` maps stage name -> method name, or lists method names used as stage names.
        Returns `target`, whose listed methods now record a stage per call.
        """
        pairs = stages.items() if isinstance(stages, Mapping) else ((name, name) for name in stages)
        for stage_name, method_name in pairs:
            method = getattr(target, method_name, None)
            if not callable(method):
                raise ValueError(f"expected {type(target).__name__}.{method_name} to be a method, got {method!r}")
            setattr(target, method_name, _wrap(method, lambda name=stage_name: self.stage(name)))
        return target

    def finish(self, status: str | None = None, error: BaseException | None = None) -> None:
        """End the run (also done at interpreter exit). Status: "failed" says the run failed; left
        out, it failed if it ends on `error`, else the daemon says "ok" or, where some stage
        failed on the way, "finished with failures" (daemon/projection/_outcomes.py)."""
        if self.finished or os.getpid() != self._owner_pid:
            return
        self.finished = True
        try:
            process = _process_for_run(self)
            if status is None:
                status = "failed" if error is not None else "ok"
            process.sender.emit(
                protocol.run_finished(
                    process.client_id,
                    self.id,
                    self.now_ns(),
                    status=status,
                    duration_ms=(time.monotonic_ns() - self._t0) / 1e6,
                    stages_failed=self._failed_stages,
                    dropped_events=process.sender.stats.dropped,
                    error_type=type(error).__qualname__ if error is not None else None,
                    error_message=str(error)[:4096] if error is not None else None,
                )
            )
            if self in _runs:
                _runs.remove(self)
        except Exception as internal:
            _internal_error(internal)

    def flush(self, timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> bool:
        """Wait until the daemon has every event so far (or they are spooled to disk)."""
        return _process_for_run(self).sender.flush(check_timeout(timeout_s))

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> bool:
        self.finish(error=error)
        return False

    def __repr__(self) -> str:
        return f"Run(pipeline={self.pipeline!r}, id={self.id!r})"


def _wrap(function: Callable[..., Any], make_stage: Callable[[], Any]) -> Callable[..., Any]:
    """`function` with every call inside a stage; coroutine functions stay coroutines."""
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with make_stage():
                return await function(*args, **kwargs)

        return async_wrapper

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with make_stage():
            return function(*args, **kwargs)

    return wrapper


class _NoStage:
    """What `stagewatch.stage()` gives when no run is active: records nothing."""

    outputs: list[str] = []

    def __enter__(self) -> _NoStage:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def save(self, filename: str, value: Any) -> None:
        return None

    def result(self, sample_id: str | None = None, prediction: Any = None) -> None:
        return None


_warned_no_run = False


class StageSpec:
    """`stagewatch.stage(name)`: a decorator or a context manager on the current run."""

    def __init__(self, name: str, input_path: str | None = None, sample_id: str | None = None) -> None:
        self.name = check_name(name, "stage name")
        self.input_path = input_path
        self.sample_id = sample_id
        self._open: list[Stage | _NoStage] = []

    def _make(self) -> Stage | _NoStage:
        run = current_run()
        if run is None:
            global _warned_no_run
            if not _warned_no_run:
                _warned_no_run = True
                _log.warning("stagewatch.stage(%r) used with no active run: call stagewatch.init()", self.name)
            return _NoStage()
        return run.stage(self.name, input_path=self.input_path, sample_id=self.sample_id)

    def __call__(self, function: F) -> F:
        return _wrap(function, self._make)  # type: ignore[return-value]

    def __enter__(self) -> Stage | _NoStage:
        stage = self._make()
        self._open.append(stage)
        return stage.__enter__()

    def __exit__(self, *exc: Any) -> bool:
        return self._take_open().__exit__(*exc)

    def _take_open(self) -> Stage | _NoStage:
        """The stage this `with` opened: the one current in this thread or task (a spec shared
        by threads or tasks has several open at once, and they need not end in order), else
        the latest."""
        current = _current_stage.get()
        try:
            self._open.remove(current)  # one C call: atomic against the other threads
        except ValueError:
            return self._open.pop()
        return current


def current_run() -> Run | None:
    """The most recently started run of this process that has not finished."""
    newest = _runs[-1:]  # one read (a slice is): another thread may end the run between a test and an index
    return newest[0] if newest else None


def current_stage() -> Stage | None:
    """The innermost open stage in this thread or task."""
    return _open_stage(_current_stage.get())


def _open_stage(stage: Stage | None) -> Stage | None:
    """`stage`, or its nearest ancestor that has not ended (a context may still name a stage
    that ended elsewhere: see `Stage._leave_context`)."""
    while stage is not None and stage._end_ts:
        stage = stage._parent_stage
    return stage


def shutdown(timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> None:
    """Finish this process's runs and deliver every event within `timeout_s` (math.inf: as
    long as it takes); what is unacknowledged then is spooled, which takes as long as the
    backlog needs (at most 30 s more)."""
    check_timeout(timeout_s)
    global _process
    process = _process
    if process is None or process.pid != os.getpid():
        return
    for run in list(_runs):
        run.finish()
    with _process_lock:
        _process = None
    global _closing
    _closing = process.sender
    safe_close(process.sender, timeout_s)
    _closing = None
