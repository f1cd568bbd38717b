"""GPU memory per stage and device, end to end: a pipeline process whose CUDA devices are faked
(this machine has none: a `torch` module on its path stands for the system edge, the tracking is
the real one), the real daemon, Parquet, the audit trail, `stats` and `show`. On a GPU machine
tests/gpu/ and benchmarks/gpu_check.py check the same with real allocations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stagewatch._gpu import host_gpu_problem
from stagewatch.daemon.query._readmodels import read_table
from tests.conftest import DaemonProcess, run_python, sw, wait_for

FAKE_TORCH = '''
"""Two CUDA devices whose caching allocators the pipeline drives through allocate()/free()."""
import types
_allocated, _peak = [0, 0], [0, 0]
def _set(device, value):
    _allocated[device] = value
    _peak[device] = max(_peak[device], value)
def _reset(device):
    _peak[device] = _allocated[device]
cuda = types.SimpleNamespace(
    is_initialized=lambda: True,
    device_count=lambda: 2,
    max_memory_allocated=lambda d: _peak[d],
    reset_peak_memory_stats=_reset,
    allocate=lambda d, n: _set(d, _allocated[d] + n),
    free=lambda d, n: _set(d, _allocated[d] - n),
)
'''

PIPELINE = """
import sys, stagewatch, torch
MB = 2**20
run = stagewatch.init(pipeline="gpu", home=sys.argv[1])
with run.stage("infer", sample_id="a"):
    torch.cuda.allocate(0, 1024 * MB)
    torch.cuda.allocate(1, 256 * MB)
    with run.stage("nms", sample_id="a"):
        torch.cuda.allocate(0, 64 * MB)
        torch.cuda.free(0, 64 * MB)
    torch.cuda.free(0, 1024 * MB)  # freed before the stage ends: its peak stays
    torch.cuda.free(1, 256 * MB)
with run.stage("idle", sample_id="a"):
    pass
run.finish()
assert run.flush(10)
print(run.id)
"""


def test_peaks_per_device_reach_parquet_the_audit_trail_stats_and_show(home: Path, tmp_path: Path) -> None:
    (tmp_path / "torch.py").write_text(FAKE_TORCH)
    daemon = DaemonProcess(home).start()
    try:
        env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        result = run_python(PIPELINE.replace("sys.argv[1]", repr(str(home))), env=env)
        assert result.returncode == 0, result.stderr
        run_id = result.stdout.split()[-1]
        audit = daemon.audit(run_id)
        rows = wait_for(lambda: (t := read_table(home, "stage_executions")).num_rows == 3 and t)
        by_stage = {r["stage"]: r for r in rows.to_pylist()}
        # An outer stage's peak holds its nested stage's; a peak is what was allocated, not a difference.
        assert by_stage["infer"]["gpu_devices"] == [("0", 1088.0), ("1", 256.0)]
        assert by_stage["infer"]["gpu_peak_mb"] == 1344.0 and by_stage["infer"]["gpu_source"] == "torch"
        assert by_stage["nms"]["gpu_devices"] == [("0", 1088.0), ("1", 256.0)]
        assert by_stage["idle"]["gpu_peak_mb"] == 0.0 and by_stage["idle"]["gpu_devices"] == []
        assert "caching allocator" in audit["gpu_sources"]["torch"]  # what the source cannot see, said
        stats = {s["stage"]: s for s in json.loads(sw("stats", "--home", str(home), "--json").stdout)}
        assert stats["infer"]["gpu"]["devices"]["1"] == {"count": 1, "median": 256.0, "max": 256.0}
        assert stats["infer"]["gpu"]["sources"] == ["torch"] and stats["idle"]["gpu"]["devices"] == {}
        text = sw("stats", "--home", str(home)).stdout
        assert "GPU (torch) by device: 0 max 1088.0 MB, median 1088.0 · 1 max 256.0 MB" in text
        shown = sw("show", run_id, "--home", str(home)).stdout
        assert "GPU peak MB" in shown and "GPU by device: 0 max 1088.0 MB · 1 max 256.0 MB" in shown
        assert "GPU readings from torch: PyTorch's caching allocator" in shown
    finally:
        daemon.stop()


@pytest.mark.skipif(host_gpu_problem() is None, reason="this host has a GPU NVML can see")
def test_a_cpu_only_pipeline_is_not_warned_and_the_daemon_says_it_once(home: Path) -> None:
    daemon = DaemonProcess(home).start()
    try:
        code = f"""
import stagewatch
run = stagewatch.init(pipeline="cpu", home={str(home)!r})
for i in range(3):
    with run.stage("resize", sample_id=str(i)):
        pass
run.finish()
assert run.flush(10)
print(run.id)
"""
        result = run_python(code, env={"STAGEWATCH_GPU_SOURCE": ""})
        assert result.returncode == 0 and "GPU" not in result.stderr, result.stderr
        run_id = result.stdout.split()[-1]
        daemon.audit(run_id)
        assert "no GPU readings on" in sw("show", run_id, "--home", str(home)).stdout
        assert "no GPU readings in these stages" in sw("stats", "--home", str(home)).stdout
    finally:
        daemon.stop()
    assert daemon.log().count("no GPU on this host") == 1
