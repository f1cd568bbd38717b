"""GPU memory per stage, checked on a real GPU: stages allocate known amounts through PyTorch,
CuPy and JAX (and PyTorch read through NVML), nested, freed before their end, on a second device
when there is one; the script prints expected vs recorded per stage and exits 1 on a miss larger
than 2% or 2 MiB (the allocators round each block up to 512 bytes; 2 MiB is PyTorch's smallest
segment), 0 when all match, 2 when no framework could run.

Each framework runs in a fresh process of its own (nothing allocated before its stages) through
the real client: `import stagewatch`, `run.stage(...)`. No daemon is needed: with none
listening, the client spools its events at shutdown and the child reads them back from the
spool (the event the daemon would ingest, byte for byte). It then also times empty stages with
GPU tracking against STAGEWATCH_GPU_SOURCE=off (µs a stage, median and p99).

    python benchmarks/gpu_check.py                  # every framework importable here
    python benchmarks/gpu_check.py --only torch jax

On the device machine (it has torch, cupy, jax, pynvml, msgpack, psutil, numpy, pyarrow but
not pyzmq): here, once, `echo /.whl/ >> .git/info/exclude` and fetch the client's one missing
wheel (docs/gpu.md has the exact pip download line), then run with carry [".whl"]:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
      && PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py
(without an installed stagewatch the script imports the checkout's client/ as `stagewatch`.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 2**20
TOLERANCE = 0.02
ROUNDING_MB = 2.0
FRAMEWORKS = ("torch", "cupy", "jax", "nvml")
ROOT = Path(__file__).resolve().parents[1]


# -- in the child: one framework's stages -------------------------------------------------------
class Torch:
    module = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        torch.zeros(1, device="cuda:0")  # CUDA set up by the pipeline, as in a real one
        torch.cuda.synchronize()
        self.devices = torch.cuda.device_count()
        self.held: dict[int, int] = {d: torch.cuda.memory_allocated(d) for d in range(self.devices)}

    def allocate(self, mib: int, device: int = 0) -> Any:
        block = self.torch.empty(mib * MIB, dtype=self.torch.uint8, device=f"cuda:{device}")
        self.held[device] = self.held.get(device, 0) + mib * MIB
        return block

    def free(self, block: Any, device: int = 0) -> None:
        self.held[device] -= block.numel()
        del block
        self.torch.cuda.synchronize()


class Cupy:
    module = "cupy"

    def __init__(self) -> None:
        import cupy

        self.cupy = cupy
        self.devices = cupy.cuda.runtime.getDeviceCount()
        cupy.zeros(1)  # the pool in use before the stages: 512 bytes
        self.held = {0: cupy.get_default_memory_pool().used_bytes()}

    def allocate(self, mib: int, device: int = 0) -> Any:
        with self.cupy.cuda.Device(device):
            block = self.cupy.empty(mib * MIB, dtype=self.cupy.uint8)
        self.held[device] = self.held.get(device, 0) + mib * MIB
        return block

    def free(self, block: Any, device: int = 0) -> None:
        self.held[device] -= block.nbytes
        del block


class Jax:
    module = "jax"

    def __init__(self) -> None:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        gpus = [d for d in jax.local_devices() if d.platform == "gpu"]
        if not gpus:
            raise RuntimeError("JAX sees no GPU")
        self.gpus = gpus
        self.devices = len(gpus)
        jnp.zeros(1).block_until_ready()
        self.held = {d.id: int((d.memory_stats() or {}).get("bytes_in_use", 0)) for d in gpus}

    def allocate(self, mib: int, device: int = 0) -> Any:
        with self.jax.default_device(self.gpus[device]):  # made there: no copy through device 0
            block = self.jnp.zeros(mib * MIB, dtype=self.jnp.uint8)
        block.block_until_ready()
        self.held[device] = self.held.get(device, 0) + mib * MIB
        return block

    def free(self, block: Any, device: int = 0) -> None:
        self.held[device] -= block.nbytes
        block.delete()


def child(framework: str) -> None:
    """Run the stages, read the events back from the spool, print one JSON object."""
    home = Path(tempfile.mkdtemp(prefix="sw-gpu-"))
    os.environ.update(STAGEWATCH_HOME=str(home), STAGEWATCH_ENDPOINT=f"ipc://{home}/nobody.sock")
    if framework == "nvml":
        os.environ["STAGEWATCH_GPU_SOURCE"] = "nvml"
    gpu = {"torch": Torch, "nvml": Torch, "cupy": Cupy, "jax": Jax}[framework]()
    stagewatch = checkout_client()

    expected: dict[str, dict[str, float]] = {}
    run = stagewatch.init(pipeline=f"gpu-check-{framework}")

    def expect(name: str) -> None:  # what is allocated right now is this stage's floor
        expected[name] = {str(d): b / MIB for d, b in gpu.held.items() if b}

    # Sizes rise stage by stage, so that JAX's process-wide peak (it cannot be reset) rises in
    # each; the last stage stays below it on purpose: JAX then reports a lower bound.
    with run.stage("nothing"):
        expect("nothing")
    with run.stage("freed_256mib_before_end"):
        blocks = [gpu.allocate(256)]
        expect("freed_256mib_before_end")
        gpu.free(blocks.pop())  # the only reference: the memory goes back before the stage ends
    with run.stage("outer"):
        blocks = [gpu.allocate(512)]
        with run.stage("inner"):
            blocks.append(gpu.allocate(256))
            expect("inner")
            gpu.free(blocks.pop())
        expected["outer"] = expected["inner"]  # its peak was inside inner
    gpu.free(blocks.pop())
    with run.stage("hold_1gib"):
        blocks = [gpu.allocate(1024)]
        expect("hold_1gib")
    gpu.free(blocks.pop())
    if gpu.devices > 1:
        with run.stage("second_device"):
            blocks = [gpu.allocate(128, device=1)]
            expect("second_device")
        gpu.free(blocks.pop(), device=1)
    with run.stage("below_an_earlier_peak"):
        blocks = [gpu.allocate(64)]
        expect("below_an_earlier_peak")
        gpu.free(blocks.pop())
    if framework == "jax":  # documented: the larger of in use at start and end, a lower bound
        expected["below_an_earlier_peak"] = {str(d): b / MIB for d, b in gpu.held.items() if b}
    overhead = stage_overhead(run)
    problem = stagewatch._run._process_for_run(run).gpu.problem
    stagewatch.shutdown(5)
    recorded = spooled_stages(home)
    print(
        json.dumps(
            {
                "framework": framework,
                "expected": expected,
                "recorded": recorded,
                "overhead": overhead,
                "problem": problem,
            }
        )
    )


def checkout_client() -> Any:
    """`stagewatch` as installed, else the checkout's client/ folder imported as `stagewatch`
    (a GPU machine without an install: only the client's own dependencies are needed)."""
    if importlib.util.find_spec("stagewatch") is None:
        spec = importlib.util.spec_from_file_location(
            "stagewatch", ROOT / "client" / "__init__.py", submodule_search_locations=[str(ROOT / "client")]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["stagewatch"] = module
        spec.loader.exec_module(module)
    import stagewatch

    return stagewatch


def stage_overhead(run: Any, count: int = 2000) -> dict[str, float]:
    """µs an empty stage costs (enter + exit) with GPU tracking: median and p99."""
    timings = []
    for _ in range(count):
        started = time.perf_counter_ns()
        with run.stage("empty"):
            pass
        timings.append((time.perf_counter_ns() - started) / 1000)
    timings.sort()
    return {"median_us": statistics.median(timings), "p99_us": timings[int(len(timings) * 0.99)]}


def spooled_stages(home: Path) -> dict[str, dict[str, Any]]:
    import msgpack

    from stagewatch._records import scan_records

    found = {}
    for spool in sorted((home / "spool").glob("*.spool")):
        for _, payload in scan_records(spool.read_bytes()):
            event = msgpack.unpackb(payload)
            if event.get("type") == "stage_finished" and event["stage"] != "empty":
                found[event["stage"]] = {
                    "total": event.get("gpu_peak_mb"),
                    "source": event.get("gpu_source"),
                    "devices": event.get("gpu_devices") or {},
                }
    return found


# -- in the parent: one process a framework, then the table --------------------------------------
def available(framework: str) -> bool:
    module = "pynvml" if framework == "nvml" else framework
    return importlib.util.find_spec(module) is not None and (framework != "nvml" or available("torch"))


def run_child(framework: str, extra_env: dict[str, str] | None = None) -> dict[str, Any] | str:
    env = {**os.environ, **(extra_env or {})}
    done = subprocess.run(
        [sys.executable, __file__, "--child", framework], capture_output=True, text=True, timeout=240, env=env
    )
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]
    return json.loads(done.stdout.strip().splitlines()[-1])


def close_enough(expected: float, recorded: float | None) -> bool:
    return recorded is not None and abs(recorded - expected) <= max(TOLERANCE * expected, ROUNDING_MB)


def compare(result: dict[str, Any]) -> tuple[list[list[str]], int]:
    rows, misses = [], 0
    nvml = result["framework"] == "nvml"
    for stage, want in result["expected"].items():
        got = result["recorded"].get(stage, {})
        for device in sorted({*want, *got.get("devices", {})}, key=int) or ["0"]:
            expected, recorded = want.get(device, 0.0), got.get("devices", {}).get(device)
            # NVML sees what the driver reserved (the CUDA context, allocator caches): at least what was allocated.
            ok = recorded is not None and recorded >= expected if nvml else close_enough(expected, recorded or 0.0)
            verdict = "ok" if ok else "MISS"
            if nvml and not got.get("source") and "PID namespace" in result["problem"]:
                verdict, ok = "n/a: NVML cannot match this container's PIDs (said, not guessed)", True
            misses += not ok
            shown = "-" if recorded is None else f"{recorded:.1f}"
            rows.append(
                [result["framework"], stage, device, f"{expected:.1f}", shown, got.get("source") or "-", verdict]
            )
    return rows, misses


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    for line in (header, ["-" * w for w in widths], *rows):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=FRAMEWORKS)
    parser.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    rows, overheads, misses, ran = [], [], 0, 0
    for framework in args.only or FRAMEWORKS:
        if not available(framework):
            print(f"{framework}: not installed here, skipped")
            continue
        result = run_child(framework)
        if isinstance(result, str):
            print(f"{framework}: could not run: {result}")
            misses += 1
            continue
        ran += 1
        found, missed = compare(result)
        rows += found
        misses += missed
        overheads.append([framework, f"{result['overhead']['median_us']:.1f}", f"{result['overhead']['p99_us']:.1f}"])
    if not ran:
        print("no framework with a GPU could run here")
        return 2
    off = run_child("torch" if available("torch") else (args.only or FRAMEWORKS)[0], {"STAGEWATCH_GPU_SOURCE": "off"})
    if isinstance(off, dict):
        overheads.append(["off (CPU only)", f"{off['overhead']['median_us']:.1f}", f"{off['overhead']['p99_us']:.1f}"])
    print_table(
        f"GPU peak per stage and device, MB (a miss: off by more than {TOLERANCE:.0%} or {ROUNDING_MB} MB)",
        ["framework", "stage", "device", "expected", "recorded", "source", ""],
        rows,
    )
    print_table("An empty stage's cost with GPU tracking (2,000 stages, µs)", ["source", "median", "p99"], overheads)
    print(f"\n{misses} misses" if misses else "\nall stages match")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
