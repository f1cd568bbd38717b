"""benchmarks/gpu_check.py: on a GPU machine it runs for real (the test below that needs CUDA);
everywhere its bookkeeping (stages, spool read back, expected vs recorded, the exit code) is
checked against a fake `torch` whose allocator the stages drive, one that can also be wrong."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

FAKE_TORCH = """
import types
uint8 = "uint8"
_allocated, _peak = {}, {}
SKEW = __SKEW__  # how much the fake allocator over-reports: 0 is an honest one
class _Block:
    def __init__(self, size, device):
        self.size, self.device = size, device
        _allocated[device] = _allocated.get(device, 0) + size
        _peak[device] = max(_peak.get(device, 0), _allocated[device])
    def numel(self):
        return self.size
    def __del__(self):
        _allocated[self.device] -= self.size
def _index(device):
    return int(str(device).rpartition(":")[2] or 0)
def empty(size, dtype=None, device="cuda:0"):
    return _Block(size, _index(device))
def zeros(size, dtype=None, device="cuda:0"):
    return _Block(512, _index(device))
def _reset(d):
    _peak[d] = _allocated.get(d, 0)
cuda = types.SimpleNamespace(
    is_initialized=lambda: True,
    device_count=lambda: 2,
    synchronize=lambda: None,
    memory_allocated=lambda d: _allocated.get(d, 0),
    max_memory_allocated=lambda d: int(_peak.get(d, 0) * (1 + SKEW)),
    reset_peak_memory_stats=_reset,
)
"""


def run_check(tmp_path: Path, skew: float) -> subprocess.CompletedProcess[str]:
    (tmp_path / "torch.py").write_text(FAKE_TORCH.replace("__SKEW__", repr(skew)))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "torch"], capture_output=True, text=True, timeout=120, env=env
    )


def test_the_check_passes_an_honest_allocator_per_stage_and_device(tmp_path: Path) -> None:
    done = run_check(tmp_path, 0.0)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| torch ") and line.count("|") == 8]
    stages = {line.split("|")[2].strip() for line in rows}
    assert stages == {
        "nothing",
        "freed_256mib_before_end",
        "outer",
        "inner",
        "hold_1gib",
        "second_device",
        "below_an_earlier_peak",
    }
    hold = next(line for line in rows if "| hold_1gib " in line)
    assert "| 1024.0 " in hold and "| ok " in hold
    assert "all stages match" in done.stdout and "off (CPU only)" in done.stdout


def test_the_check_fails_an_allocator_three_percent_off(tmp_path: Path) -> None:
    done = run_check(tmp_path, 0.03)
    assert done.returncode == 1 and "MISS" in done.stdout, done.stdout + done.stderr


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch with CUDA (the GPU machine)")
def test_on_a_gpu_every_framework_s_stages_match() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=290)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
