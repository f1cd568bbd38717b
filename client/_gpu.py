"""GPU memory per stage and per device: each framework's own allocator where one drives the GPU,
NVML's per-process reading for anything else.

- PyTorch: the caching allocator's peak of allocated bytes, reset per stage on every device
  (`max_memory_allocated(d)` / `reset_peak_memory_stats(d)`), folded through a PeakTracker so
  nested and threaded stages keep their own peaks, as the CPU peak does.
- CuPy: its default memory pool has no peak counter, so a memory hook (CuPy's hooks are per
  thread) counts the bytes the stage's thread takes from and gives back to the pool; the
  peak is the pool's bytes in use at the start (current device) plus the highest the count
  reached, on each device.
- JAX: `device.memory_stats()`'s `peak_bytes_in_use` cannot be reset: when it rose during the
  stage it is the stage's peak; otherwise the stage stayed below an earlier peak and the
  reading is the larger of the bytes in use at its start and end (a lower bound).
- NVML (TensorRT, ONNX Runtime, raw CUDA ...): the memory the driver has reserved for this
  process on each device, read at the start and the end of the stage (no peak in between).
  It sees reserved memory, allocator caches included, not what is allocated; and nothing in
  a container with its own PID namespace (NVML reports host PIDs).

Framework allocators are read when a framework has already set up CUDA (stagewatch never
initializes one: that would cost the pipeline a CUDA context); NVML only when none has. Several
frameworks in one process: their peaks are added per device (an upper bound: their peaks need
not coincide). STAGEWATCH_GPU_SOURCE=nvml|torch|cupy|jax|off picks one source instead.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from stagewatch._memory import BYTES_PER_MB, PeakTracker

_log = logging.getLogger("stagewatch")
SOURCES = ("torch", "cupy", "jax", "nvml")
NVML_IDLE_RECHECK_S = 1.0
# What each source cannot see: in the docs and in each run's audit trail.
SOURCE_NOTES = {
    "torch": "PyTorch's caching allocator: peak of allocated bytes; memory it caches but has not "
    "handed out, and memory of other libraries, is not counted",
    "cupy": "CuPy's default memory pool, in the stage's thread: bytes in use at the start plus the "
    "stage's own peak; other threads and other allocators are not counted",
    "jax": "JAX's memory_stats: peak_bytes_in_use when it rose during the stage, else the larger of "
    "the bytes in use at start and end (a lower bound: JAX's peak cannot be reset)",
    "nvml": "NVML: memory the driver reserved for this process (allocator caches included), read "
    "at the stage's start and end only: a short peak in between is not seen",
}


@dataclass(frozen=True)
class GpuReading:
    """One stage's GPU peak: the source it came from and bytes per device index."""

    source: str
    devices: dict[int, int] = field(default_factory=dict)

    @property
    def total_mb(self) -> float:
        return sum(self.devices.values()) / BYTES_PER_MB

    @property
    def devices_mb(self) -> dict[str, float]:
        return {str(device): peak / BYTES_PER_MB for device, peak in sorted(self.devices.items())}


class TorchSource:
    name = "torch"

    def __init__(self) -> None:
        self._trackers: dict[int, PeakTracker] = {}

    def begin(self) -> dict[int, int] | None:
        torch = sys.modules.get("torch")
        try:
            if torch is None or not torch.cuda.is_initialized():
                return None  # never initialize CUDA for the pipeline
            cuda = torch.cuda
            return {device: self._tracker(cuda, device).begin()[0] for device in range(cuda.device_count())}
        except Exception:
            return None

    def _tracker(self, cuda: Any, device: int) -> PeakTracker:
        if device not in self._trackers:
            self._trackers[device] = PeakTracker(
                lambda: cuda.max_memory_allocated(device), lambda: cuda.reset_peak_memory_stats(device)
            )
        return self._trackers[device]

    def end(self, tokens: dict[int, int]) -> dict[int, int]:
        peaks = {device: self._trackers[device].end(token)[0] for device, token in tokens.items()}
        return {device: peak for device, peak in peaks.items() if peak}


class CupySource:
    name = "cupy"
    _names = itertools.count()

    def __init__(self) -> None:
        self._hook_class: type | None = None
        self._broken = False

    def begin(self) -> tuple[Any, int, int] | None:
        cupy = sys.modules.get("cupy")
        if cupy is None or self._broken:
            return None
        try:
            pool = cupy.get_default_memory_pool()
            if not pool.total_bytes():
                return None  # the pool holds nothing: CuPy has not allocated on a GPU yet
            device = cupy.cuda.runtime.getDevice()
            hook = self._hook(cupy)(f"stagewatch-{next(self._names)}")
            hook.__enter__()
            return hook, device, pool.used_bytes()
        except Exception:  # a CuPy without a usable GPU: stop asking
            self._broken = True
            return None

    def _hook(self, cupy: Any) -> type:
        if self._hook_class is None:
            self._hook_class = _pool_counter(cupy.cuda.MemoryHook)
        return self._hook_class

    def end(self, started: tuple[Any, int, int]) -> dict[int, int]:
        hook, device, in_use = started
        # A stage ended in another thread than it began: the hook stays with the first thread.
        with contextlib.suppress(Exception):
            hook.__exit__(None, None, None)
        peaks = dict(hook.peak)
        peaks[device] = peaks.get(device, 0) + in_use
        return {d: peak for d, peak in peaks.items() if peak}


def _pool_counter(base: type) -> type:
    class PoolCounter(base):  # type: ignore[misc,valid-type]
        """Bytes taken from the pool minus bytes given back, per device, and their highest."""

        def __init__(self, name: str) -> None:
            self.name = name
            self.now: dict[int, int] = {}
            self.peak: dict[int, int] = {}

        def malloc_postprocess(self, **kwargs: Any) -> None:
            device = kwargs["device_id"]
            now = self.now[device] = self.now.get(device, 0) + kwargs["mem_size"]
            if now > self.peak.get(device, 0):
                self.peak[device] = now

        def free_postprocess(self, **kwargs: Any) -> None:
            device = kwargs["device_id"]
            self.now[device] = self.now.get(device, 0) - kwargs["mem_size"]

    return PoolCounter


class JaxSource:
    name = "jax"

    def _devices(self) -> list[Any] | None:
        bridge = sys.modules.get("jax._src.xla_bridge")
        if not getattr(bridge, "_backends", None):
            return None  # JAX has not started a backend: asking would start one
        try:
            return [d for d in sys.modules["jax"].local_devices() if d.platform == "gpu"] or None
        except Exception:
            return None

    def begin(self) -> list[tuple[Any, int, int]] | None:
        devices = self._devices()
        if devices is None:
            return None
        return [(device, *_jax_stats(device)) for device in devices]

    def end(self, started: list[tuple[Any, int, int]]) -> dict[int, int]:
        peaks = {}
        for device, peak_before, in_use_before in started:
            peak_after, in_use_after = _jax_stats(device)
            # The process peak rose during the stage: that is the stage's. Else a lower bound.
            peaks[device.id] = peak_after if peak_after > peak_before else max(in_use_before, in_use_after)
        return {device: peak for device, peak in peaks.items() if peak}


def _jax_stats(device: Any) -> tuple[int, int]:
    stats = device.memory_stats() or {}
    return int(stats.get("peak_bytes_in_use", 0)), int(stats.get("bytes_in_use", 0))


class NvmlSource:
    name = "nvml"

    def __init__(self) -> None:
        self._handles: list[Any] | None = None
        self.problem: str | None = None
        self._idle_until = 0.0  # monotonic time before which this process is taken to hold no GPU memory

    def _start(self) -> None:
        if self._handles is not None or self.problem is not None:
            return
        try:
            if _own_pid_namespace():
                raise RuntimeError(
                    "this process has its own PID namespace (a container): NVML reports host PIDs, "
                    "so it cannot tell this process's memory"
                )
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            if not self._handles:
                raise RuntimeError("NVML sees no GPU")
        except Exception as error:
            self._handles = []
            self.problem = f"{type(error).__name__}: {error}"

    def begin(self) -> dict[int, int] | None:
        """The memory NVML sees this process hold, or None when it holds none: a process on a GPU
        host that does not use the GPU asks NVML (tens of µs a call) at most once a second."""
        self._start()
        if not self._handles or time.monotonic() < self._idle_until:
            return None
        used = self._used()
        if not any(used.values()):
            self._idle_until = time.monotonic() + NVML_IDLE_RECHECK_S
            return None
        return used

    def end(self, started: dict[int, int]) -> dict[int, int]:
        now = self._used()
        peaks = {d: max(started.get(d, 0), now.get(d, 0)) for d in {*started, *now}}
        return {d: peak for d, peak in peaks.items() if peak}

    def _used(self) -> dict[int, int]:
        pid, used = os.getpid(), {}
        for index, handle in enumerate(self._handles or []):
            try:
                processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:
                continue
            used[index] = sum(p.usedGpuMemory or 0 for p in processes if p.pid == pid)
        return used


def _own_pid_namespace() -> bool:
    """Whether this process sees itself under another PID than the host does (NSpid lists both)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"NSpid:"):
                    return len(line.split()) > 2
    except OSError:
        pass
    return False


class GpuMemory:
    """Per stage: begin() takes the readings the sources in use need, end() gives a GpuReading
    (None when no source sees a GPU; `problem` then says why, and is logged once at debug)."""

    def __init__(self, choice: str | None = None) -> None:
        choice = (choice or os.environ.get("STAGEWATCH_GPU_SOURCE", "auto")).strip().lower() or "auto"
        if choice not in ("auto", "off", *SOURCES):
            _log.warning("stagewatch: STAGEWATCH_GPU_SOURCE=%r is not auto, off or one of %s", choice, SOURCES)
            choice = "auto"
        self.choice = choice
        self.allocators = [s for s in (TorchSource(), CupySource(), JaxSource()) if choice in ("auto", s.name)]
        self.nvml = NvmlSource() if choice in ("auto", "nvml") else None
        self._told = False

    @property
    def problem(self) -> str:
        if self.choice == "off":
            return "GPU readings switched off (STAGEWATCH_GPU_SOURCE=off)"
        if self.nvml is not None and self.nvml.problem:
            return f"no GPU readings: {self.nvml.problem}"
        return f"no GPU readings: {self.choice} is not using a GPU in this process"

    def begin(self) -> list[tuple[Any, Any]]:
        started = [(source, state) for source in self.allocators if (state := source.begin()) is not None]
        if not started and self.nvml is not None and (state := self.nvml.begin()) is not None:
            started.append((self.nvml, state))
        if not started and not self._told:
            self._told = True
            _log.debug("stagewatch: %s (gpu_peak_mb is null)", self.problem)
        return started

    def end(self, started: list[tuple[Any, Any]]) -> GpuReading | None:
        if not started:
            return None
        devices: dict[int, int] = {}
        for source, state in started:
            for device, peak in source.end(state).items():
                devices[device] = devices.get(device, 0) + peak
        return GpuReading("+".join(source.name for source, _ in started), devices)


def gpu_values(reading: GpuReading | None) -> tuple[float | None, str | None, dict[str, float] | None]:
    """The stage event's GPU fields: the total peak, its source and the peak per device."""
    if reading is None:
        return None, None, None
    return reading.total_mb, reading.source, reading.devices_mb


def host_gpu_problem() -> str | None:
    """Why NVML sees no GPU on this host (None when it sees one): said once, in the daemon's log."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return None if pynvml.nvmlDeviceGetCount() else "NVML sees no GPU"
        finally:
            pynvml.nvmlShutdown()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
