"""GPU memory per stage and device. The CUDA devices are the system edge this machine lacks, so
the frameworks' allocators are faked here at the narrowest point (the calls stagewatch makes);
the tracking logic is the real one. tests/gpu/ and benchmarks/gpu_check.py check it on a GPU."""

from __future__ import annotations

import logging
import sys
import threading
import time
import types

import pytest

import stagewatch
from stagewatch import _run
from stagewatch._gpu import GpuMemory, GpuReading, gpu_values, host_gpu_problem
from tests.client.test_memory import FakeMark

MB = 1024 * 1024


def fake_torch(monkeypatch, devices: int = 1) -> list[FakeMark]:
    """Each device's caching allocator: allocated bytes (`set`) and a resettable peak."""
    allocators = [FakeMark(0) for _ in range(devices)]
    cuda = types.SimpleNamespace(
        is_initialized=lambda: True,
        device_count=lambda: devices,
        max_memory_allocated=lambda d: allocators[d].peak,
        reset_peak_memory_stats=lambda d: allocators[d].reset(),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    return allocators


class FakeHook:
    """cupy.cuda.MemoryHook's contract: entered per thread; the pool calls each entered hook."""

    local = threading.local()

    def __enter__(self):
        FakeHook.hooks().setdefault(self.name, self)
        return self

    def __exit__(self, *_):
        del FakeHook.hooks()[self.name]

    @staticmethod
    def hooks() -> dict:
        if not hasattr(FakeHook.local, "hooks"):
            FakeHook.local.hooks = {}
        return FakeHook.local.hooks


class FakePool:
    def __init__(self) -> None:
        self.used = 0

    def total_bytes(self) -> int:
        return max(self.used, 1)

    def used_bytes(self) -> int:
        return self.used

    def malloc(self, size: int, device: int = 0) -> None:
        self.used += size
        for hook in list(FakeHook.hooks().values()):
            hook.malloc_postprocess(device_id=device, size=size, mem_size=size, mem_ptr=0, pmem_id=0)

    def free(self, size: int, device: int = 0) -> None:
        self.used -= size
        for hook in list(FakeHook.hooks().values()):
            hook.free_postprocess(device_id=device, mem_size=size, mem_ptr=0, pmem_id=0)


def fake_cupy(monkeypatch) -> FakePool:
    pool = FakePool()
    cuda = types.SimpleNamespace(MemoryHook=FakeHook, runtime=types.SimpleNamespace(getDevice=lambda: 0))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(get_default_memory_pool=lambda: pool, cuda=cuda))
    return pool


NO_GPU_HERE = host_gpu_problem() is not None


@pytest.mark.skipif(not NO_GPU_HERE, reason="this host has a GPU NVML can see")
def test_without_a_gpu_readings_are_null_and_nothing_is_said_on_stderr(caplog, monkeypatch) -> None:
    monkeypatch.delenv("STAGEWATCH_GPU_SOURCE", raising=False)
    gpu = GpuMemory()
    with caplog.at_level(logging.WARNING, logger="stagewatch"):
        readings = [gpu.end(gpu.begin()) for _ in range(5)]
    assert readings == [None] * 5
    assert not caplog.records  # a CPU-only machine is normal: no warning on every pipeline's stderr
    assert gpu.problem.startswith("no GPU readings: ")
    assert gpu_values(None) == (None, None, None)


def test_torch_peaks_per_device_and_their_total(monkeypatch) -> None:
    first, second = fake_torch(monkeypatch, devices=2)
    gpu = GpuMemory("auto")
    first.set(10 * MB)
    started = gpu.begin()
    first.set(522 * MB)
    first.set(12 * MB)  # freed before the stage ends: the peak stays
    second.set(256 * MB)
    reading = gpu.end(started)
    assert reading == GpuReading("torch", {0: 522 * MB, 1: 256 * MB})
    assert gpu_values(reading) == (778.0, "torch", {"0": 522.0, "1": 256.0})


def test_nested_torch_stages_keep_their_own_peaks(monkeypatch) -> None:
    (device,) = fake_torch(monkeypatch)
    gpu = GpuMemory("torch")
    outer = gpu.begin()
    device.set(900 * MB)
    device.set(100 * MB)
    inner = gpu.begin()  # resets the device's peak: the outer stage must keep its 900
    device.set(300 * MB)
    device.set(100 * MB)
    assert gpu.end(inner).devices == {0: 300 * MB}
    assert gpu.end(outer).devices == {0: 900 * MB}


def test_cupy_stages_count_their_own_thread_and_keep_a_peak_freed_before_the_end(monkeypatch) -> None:
    pool = fake_cupy(monkeypatch)
    gpu = GpuMemory("cupy")
    pool.malloc(64 * MB)  # in use before: part of every later stage's reading
    started = gpu.begin()
    pool.malloc(1024 * MB)
    pool.free(1024 * MB)
    pool.malloc(10 * MB, device=1)
    other = threading.Thread(target=pool.malloc, args=(4096 * MB,))  # another thread's allocation
    other.start()
    other.join()
    assert gpu.end(started) == GpuReading("cupy", {0: (64 + 1024) * MB, 1: 10 * MB})
    assert not FakeHook.hooks()  # the hook is gone with the stage


def test_torch_and_cupy_in_one_process_add_up_per_device(monkeypatch) -> None:
    (device,) = fake_torch(monkeypatch)
    pool = fake_cupy(monkeypatch)
    pool.malloc(1)
    gpu = GpuMemory()
    started = gpu.begin()
    device.set(100 * MB)
    pool.malloc(50 * MB)
    reading = gpu.end(started)
    assert reading.source == "torch+cupy" and reading.devices == {0: 150 * MB + 1}


def test_jax_peak_counts_when_it_rose_and_is_a_lower_bound_when_it_did_not(monkeypatch) -> None:
    class Device:
        id, platform = 0, "gpu"

        def __init__(self) -> None:
            self.stats = {"peak_bytes_in_use": 0, "bytes_in_use": 0}

        def memory_stats(self) -> dict:
            return dict(self.stats)

    device = Device()
    monkeypatch.setitem(sys.modules, "jax._src.xla_bridge", types.SimpleNamespace(_backends={"cuda": object()}))
    monkeypatch.setitem(sys.modules, "jax", types.SimpleNamespace(local_devices=lambda: [device]))
    gpu = GpuMemory("jax")
    started = gpu.begin()
    device.stats = {"peak_bytes_in_use": 2048 * MB, "bytes_in_use": 0}
    assert gpu.end(started).devices == {0: 2048 * MB}
    started = gpu.begin()
    device.stats = {"peak_bytes_in_use": 2048 * MB, "bytes_in_use": 300 * MB}  # below the old peak
    assert gpu.end(started).devices == {0: 300 * MB}


def test_jax_imported_but_not_started_is_never_started_by_stagewatch(monkeypatch) -> None:
    def start_a_backend():
        raise AssertionError("stagewatch must not start JAX's backend")

    monkeypatch.setitem(sys.modules, "jax._src.xla_bridge", types.SimpleNamespace(_backends={}))
    monkeypatch.setitem(sys.modules, "jax", types.SimpleNamespace(local_devices=start_a_backend))
    assert GpuMemory("jax").begin() == []


def test_a_bad_source_choice_is_said_and_auto_used(monkeypatch, caplog) -> None:
    monkeypatch.setenv("STAGEWATCH_GPU_SOURCE", "tensorflow")
    with caplog.at_level(logging.WARNING, logger="stagewatch"):
        assert GpuMemory().choice == "auto"
    assert "tensorflow" in caplog.text
    assert GpuMemory("off").begin() == [] and "switched off" in GpuMemory("off").problem


def test_a_stage_event_carries_the_source_and_the_devices(home, monkeypatch) -> None:
    first, second = fake_torch(monkeypatch, devices=2)
    run = stagewatch.init(pipeline="p", home=home)
    sent: list = []
    _run._process_for_run(run).sender.emit = sent.append
    with run.stage("infer"):
        first.set(100 * MB)
        second.set(50 * MB)
    events = [item() if callable(item) else item for item in sent]
    (finished,) = [e for e in events if e and e["type"] == "stage_finished"]
    assert (finished["gpu_peak_mb"], finished["gpu_source"], finished["gpu_devices"]) == (
        150.0,
        "torch",
        {"0": 100.0, "1": 50.0},
    )
    from stagewatch.daemon.projection._schema import validate_event

    assert validate_event({**finished, "seq": 1}).gpu_devices == {"0": 100.0, "1": 50.0}


@pytest.mark.parametrize("source", ["torch", "cupy", "jax", "nvml"])
def test_every_source_says_what_it_cannot_see(source) -> None:
    from stagewatch._gpu import SOURCE_NOTES

    assert len(SOURCE_NOTES[source]) > 40


def test_nvml_reads_this_process_per_device_and_spares_a_process_that_holds_none(monkeypatch) -> None:
    import os

    from stagewatch import _gpu

    used = {0: 0, 1: 0}  # bytes this process holds per device, as the driver reports them
    calls = []

    def processes(handle: int) -> list:
        calls.append(handle)
        return [
            types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=used[handle]),
            types.SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=7 * MB),  # another process: not ours
        ]

    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetComputeRunningProcesses=processes,
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(_gpu, "_own_pid_namespace", lambda: False)
    monkeypatch.setattr(_gpu, "NVML_IDLE_RECHECK_S", 0.2)
    gpu = GpuMemory("nvml")
    assert [gpu.end(gpu.begin()) for _ in range(50)] == [None] * 50
    assert len(calls) == 2  # one look at both devices, then none until the recheck is due
    used[1] = 300 * MB  # the process starts using the second GPU
    time.sleep(0.25)
    started = gpu.begin()
    used[1] = 200 * MB
    assert gpu.end(started) == GpuReading("nvml", {1: 300 * MB})  # the larger of start and end, its device only
