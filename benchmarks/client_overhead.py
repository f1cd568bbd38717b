"""Per-stage overhead of `run.stage()` beside an empty `with` and an OpenTelemetry span.

    python benchmarks/client_overhead.py [--iterations 100000]

Each variant times N empty blocks one by one (perf_counter_ns around the `with`), in the
same process and run, after a warm-up. Ours runs with memory tracking on (per-stage CPU
RSS peak through the kernel's high-water mark) and a real daemon receiving the events.
The OpenTelemetry reference is an SDK span with a BatchSpanProcessor and an exporter that
does nothing. A second table shows what the memory readings cost, to justify the choice.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, running_daemon

import stagewatch


def per_block_ns(make: Callable[[], contextlib.AbstractContextManager], iterations: int) -> list[int]:
    timer = time.perf_counter_ns
    samples = []
    for _ in range(iterations):
        start = timer()
        with make():
            pass
        samples.append(timer() - start)
    return samples


def per_call_ns(call: Callable[[], object], iterations: int) -> list[int]:
    timer = time.perf_counter_ns
    samples = []
    for _ in range(iterations):
        start = timer()
        call()
        samples.append(timer() - start)
    return samples


def summary(samples: list[int]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) / 1000, ordered[int(len(ordered) * 0.99)] / 1000


def otel_tracer():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class NoOpExporter(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NoOpExporter()))
    return provider, provider.get_tracer("benchmark")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=100_000)
    args = parser.parse_args()
    n = args.iterations
    provider, tracer = otel_tracer()
    with running_daemon() as home:
        run = stagewatch.init(pipeline="benchmark", home=home)
        variants = {
            "empty `with` (contextlib.nullcontext)": contextlib.nullcontext,
            "stagewatch run.stage() + memory tracking, daemon running": lambda: run.stage("detection"),
            "OpenTelemetry SDK span, BatchSpanProcessor, no-op exporter": lambda: tracer.start_as_current_span("x"),
        }
        results = {}
        for name, make in variants.items():
            per_block_ns(make, n // 10)  # warm-up
            results[name] = summary(per_block_ns(make, n))
        delivered = run.flush(30)
        stats = stagewatch._run._process_for_run(run).sender.stats
        stagewatch.shutdown()
    provider.shutdown()
    otel_median = results["OpenTelemetry SDK span, BatchSpanProcessor, no-op exporter"][0]
    rows = [
        [name, f"{median:.2f}", f"{p99:.2f}", f"{median / otel_median:.2f}"] for name, (median, p99) in results.items()
    ]
    print_table(
        f"Per-stage overhead, {n:,} blocks each (us; ratio = median / OpenTelemetry median)",
        ["variant", "median us", "p99 us", "ratio"],
        rows,
    )
    print(f"\nevents delivered and acknowledged: {delivered} ({stats.acked_events:,} acked, {stats.dropped} dropped)")
    memory_readings(n)


def memory_readings(n: int) -> None:
    import psutil

    from stagewatch._memory import make_rss_tracker

    source, tracker = make_rss_tracker()
    process = psutil.Process()
    readings = {
        "psutil.Process().memory_info().rss (one reading)": lambda: process.memory_info().rss,
        "/proc/self/statm pread (one reading)": source.current,
        "stagewatch per-stage peak: reset + read at start, read + reset + read at end": lambda: tracker.end(
            tracker.begin()[0]
        ),
    }
    rows = []
    for name, call in readings.items():
        per_call_ns(call, n // 10)
        median, p99 = summary(per_call_ns(call, n))
        rows.append([name, f"{median:.2f}", f"{p99:.2f}"])
    print_table("What a memory reading costs (us)", ["reading", "median us", "p99 us"], rows)
    gpu_readings(n)


def gpu_readings(n: int) -> None:
    """GPU tracking per stage (begin + end) beside none: with a framework on a real GPU when this
    machine has one, else only the bookkeeping over allocators that answer at once (two devices),
    which is what stagewatch adds to the frameworks' own calls."""
    import types

    from stagewatch._gpu import GpuMemory

    rows = []
    choices = {"off (CPU only)": GpuMemory("off")}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        torch.zeros(1, device="cuda")
        choices["torch on this GPU"] = GpuMemory("torch")
        choices["nvml on this GPU"] = GpuMemory("nvml")
    else:  # no GPU here: the frameworks' calls made free, to show what stagewatch itself costs
        choices["auto, on this machine without a GPU (every CPU-only pipeline)"] = GpuMemory("auto")
        peaks = [0, 0]
        cuda = types.SimpleNamespace(
            is_initialized=lambda: True,
            device_count=lambda: 2,
            max_memory_allocated=peaks.__getitem__,
            reset_peak_memory_stats=lambda d: None,
        )
        choices["torch bookkeeping, 2 devices, allocator calls free (no GPU here)"] = GpuMemory("torch")
    for name, gpu in choices.items():
        if name.startswith("torch bookkeeping"):
            sys.modules["torch"] = types.SimpleNamespace(cuda=cuda)
        per_call_ns(lambda gpu=gpu: gpu.end(gpu.begin()), n // 10)
        median, p99 = summary(per_call_ns(lambda gpu=gpu: gpu.end(gpu.begin()), n))
        rows.append([name, f"{median:.2f}", f"{p99:.2f}"])
    if torch is None:
        sys.modules.pop("torch", None)
    else:
        sys.modules["torch"] = torch
    print_table(
        "What GPU tracking costs a stage (us; on a GPU: benchmarks/gpu_check.py)",
        ["source", "median us", "p99 us"],
        rows,
    )


if __name__ == "__main__":
    main()
