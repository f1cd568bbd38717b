"""Per-stage memory peaks: CPU RSS from the kernel's high-water mark (GPU: _gpu.py).

Why the kernel's high-water mark: writing "5" to /proc/self/clear_refs resets the
process's peak RSS (about 0.9 us here) and getrusage() reads it back (about 0.9 us), so
a stage gets its true peak for about 2 us. A sampling thread would cost more and still
miss short spikes; one psutil read alone costs about 9 us (see benchmarks/client_overhead.py).

The high-water mark is one per process, but stages nest and run in threads. A
PeakTracker therefore folds the current peak into every open stage before it resets
the mark, so no open stage loses the peak it saw before a nested stage began.
"""

from __future__ import annotations

import itertools
import logging
import os
import resource
import threading
from collections.abc import Callable
from pathlib import Path

_log = logging.getLogger("stagewatch")
_getrusage = resource.getrusage
_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
BYTES_PER_MB = 1024 * 1024


class PeakTracker:
    """Per-stage peaks over one process-wide resettable high-water mark (values in bytes)."""

    def __init__(
        self,
        read_peak: Callable[[], int],
        reset_peak: Callable[[], None],
        read_after_reset: Callable[[], int] | None = None,
    ) -> None:
        """`read_after_reset`: the mark right after a reset, the current value (default
        `read_peak`), where a source has a cheaper way to read it."""
        self._read_peak = read_peak
        self._reset_peak = reset_peak
        self._read_after_reset = read_after_reset or read_peak
        self._lock = threading.Lock()
        self._open: dict[int, int] = {}
        self._tokens = itertools.count()

    def begin(self) -> tuple[int, int]:
        """Open a stage; returns (token, the high-water mark just after the reset)."""
        read_peak = self._read_peak
        with self._lock:
            if self._open:
                self._fold(read_peak())
            self._reset_peak()
            start = self._read_after_reset()
            token = next(self._tokens)
            self._open[token] = start
        return token, start

    def end(self, token: int) -> tuple[int, int]:
        """Close a stage; returns (its peak, the current value after a reset)."""
        with self._lock:
            peak = self._read_peak()
            self._fold(peak)
            # Resetting here is safe (every open stage has just folded the peak in) and
            # gives the current value for the price of one more read.
            self._reset_peak()
            return self._open.pop(token, peak), self._read_after_reset()

    def _fold(self, peak: int) -> None:
        for token, seen in self._open.items():
            if peak > seen:
                self._open[token] = peak


class RssSource:
    """Current and peak RSS of this process from /proc, opened once (re-opened after fork)."""

    def __init__(self) -> None:
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._statm = os.open("/proc/self/statm", os.O_RDONLY)
        self._status = os.open("/proc/self/status", os.O_RDONLY)
        try:
            self._clear_refs: int | None = os.open("/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            self._clear_refs = None  # no reset: peaks are then max(start, end)
        self._exec_floor = self._measure_exec_floor()

    def _measure_exec_floor(self) -> int:
        """getrusage's peak never drops below the peak of the image this process exec'd from
        (the kernel keeps it in signal->maxrss): a pipeline launched by a big parent would see
        the parent's size. Readings at or below that floor come from VmHWM instead."""
        if self._clear_refs is None:
            return 0
        self.reset()
        reported = _getrusage(_RUSAGE_THREAD).ru_maxrss * 1024
        return reported if reported > self._vm_hwm() + 1024 * 1024 else 0

    @property
    def resettable(self) -> bool:
        return self._clear_refs is not None

    def current(self) -> int:
        return int(os.pread(self._statm, 64, 0).split()[1]) * self._page_size

    def peak(self) -> int:
        return self._above_floor() or self._vm_hwm()

    def after_reset(self) -> int:
        """The peak right after a reset, which is the current RSS: from getrusage above the
        exec floor, else from statm (1.6 us, where VmHWM costs 8.5: a pipeline launched by a
        bigger process paid that three times a stage, and ran 2.5x slower)."""
        return self._above_floor() or self.current()

    def _above_floor(self) -> int:
        """getrusage's peak in bytes, or 0 where it is held at the exec floor."""
        # RUSAGE_THREAD reads the same per-process high-water mark (it lives in the mm) as
        # RUSAGE_SELF, without summing every thread's counters: 0.7 us instead of 1.1 us.
        value = _getrusage(_RUSAGE_THREAD).ru_maxrss * 1024
        return value if value > self._exec_floor else 0

    def _vm_hwm(self) -> int:
        status = os.pread(self._status, 4096, 0)
        start = status.find(b"VmHWM:")
        return int(status[start + 6 : status.find(b"kB", start)]) * 1024 if start >= 0 else 0

    def reset(self) -> None:
        if self._clear_refs is not None:
            os.write(self._clear_refs, b"5")

    def close(self) -> None:
        for fd in (self._statm, self._status, self._clear_refs):
            if fd is not None:
                os.close(fd)


class PsutilRssSource:
    """Where /proc is missing (macOS, say): psutil reads RSS, about 9 us a reading."""

    resettable = False

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()

    def current(self) -> int:
        return int(self._process.memory_info().rss)


def make_rss_tracker() -> tuple[RssSource | PsutilRssSource, PeakTracker] | None:
    """The RSS source and its tracker; without a resettable peak, peaks are max(start, end)."""
    source: RssSource | PsutilRssSource
    try:
        source = RssSource()
    except OSError:
        try:
            source = PsutilRssSource()
        except Exception:  # no way to read memory here: record none
            return None
    if not source.resettable:
        return source, PeakTracker(source.current, _no_reset)
    return source, PeakTracker(source.peak, source.reset, source.after_reset)


def _no_reset() -> None:
    return None


def memory_limit_bytes() -> tuple[int, str]:
    """The memory this process may use: its cgroup's limit (v2, then v1), else physical RAM."""
    for path in _cgroup_limit_files():
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # v1 writes a huge number for "no limit"
            return int(text), f"cgroup {path}"
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical RAM"


def _cgroup_limit_files() -> list[Path]:
    files = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            if hierarchy == "0":
                files.append(Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max")
            elif "memory" in controllers.split(","):
                files.append(Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes")
    except (OSError, ValueError):
        pass
    return files


def memory_warn_fraction() -> float:
    """$STAGEWATCH_MEMORY_WARN_FRACTION (default 0.9): warn when a stage's peak passes it."""
    text = os.environ.get("STAGEWATCH_MEMORY_WARN_FRACTION", "0.9")
    try:
        fraction = float(text)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction <= 1:
        raise ValueError(f"expected STAGEWATCH_MEMORY_WARN_FRACTION between 0 and 1, got {text!r}")
    return fraction
