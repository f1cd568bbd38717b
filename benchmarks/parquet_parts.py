"""How a table's data file is written: our options (`_store.table_writer_properties`: zstd, dictionary
encoding only for the columns of few values) against pyarrow's defaults (zstd, every column
dictionary-encoded), on the same stage_executions rows.

    python benchmarks/parquet_parts.py [--rows 2000 200000] [--repeats 7]

The rows look like a pipeline's: 5 stages, one run per 1,000 rows, unique sample ids and
input paths, varying durations and memory, 2% failed with an error message. For each size:
CPU per part written (process time, so fsync waits do not count) and file size; then what
readers do with such a part: a full scan, a facet read (`stage` as a dictionary, as the
dashboard's filters do) and one run's rows. Medians of --repeats, the two ways alternating.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table

from stagewatch.daemon.tables._store import DICTIONARY_COLUMNS, STAGE_EXECUTIONS


def parquet_options(schema: pa.Schema) -> dict:
    """Our encoding choice (`_store.table_writer_properties`, for delta-rs) as pyarrow options."""
    return {"compression": "zstd", "use_dictionary": [name for name in schema.names if name in DICTIONARY_COLUMNS]}


STAGES = ("load", "preprocessing", "detection", "segmentation", "postprocessing")


def rows_of(count: int, seed: int = 7) -> pa.Table:
    rng = random.Random(seed)
    start = time.time_ns()
    columns: dict[str, list] = {name: [] for name in STAGE_EXECUTIONS.names}
    run_id = ""
    for index in range(count):
        if index % 1_000 == 0:
            run_id = str(uuid.UUID(int=rng.getrandbits(128)))
        failed = rng.random() < 0.02
        duration = rng.lognormvariate(1.5, 0.8)
        begin = start + index * 3_000_000
        row = {
            "run_id": run_id,
            "pipeline": "perception",
            "stage": STAGES[index % len(STAGES)],
            "status": "failed" if failed else "ok",
            "sample_id": f"frame_{index // len(STAGES):07d}",
            "client_id": f"c{index // 1_000:04d}",
            "span": index + 1,
            "parent_span": None,
            "start_time": begin,
            "end_time": begin + int(duration * 1e6),
            "duration_ms": duration,
            "rss_start_mb": 1_000 + rng.random() * 50,
            "rss_peak_mb": 1_100 + rng.random() * 200,
            "rss_end_mb": 1_000 + rng.random() * 50,
            "gpu_peak_mb": None,
            "input_path": f"/data/camera0/{index // len(STAGES):07d}.png",
            "output_paths": [],
            "error_type": "ValueError" if failed else None,
            "error_message": f"bad frame {index}: no objects above threshold" if failed else None,
            "lsn": index * 200,
            "gpu_source": None,
            "gpu_devices": None,
        }
        for name, value in row.items():
            columns[name].append(value)
    return pa.table(columns, schema=STAGE_EXECUTIONS)


def _median_ms(action: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.process_time()
        action()
        samples.append(time.process_time() - started)
    return statistics.median(samples) * 1e3


def measure(table: pa.Table, folder: Path, options: dict, repeats: int) -> dict[str, float]:
    path = folder / "part.parquet"
    written = _median_ms(lambda: pq.write_table(table, path, **options), repeats)
    facet = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns={"stage"}))
    stage_schema = pa.schema([pa.field("stage", pa.dictionary(pa.int32(), pa.string()))])
    one_run = ds.field("run_id") == table["run_id"][table.num_rows // 2].as_py()
    return {
        "write": written,
        "bytes": path.stat().st_size,
        "scan": _median_ms(lambda: ds.dataset(folder, format="parquet").to_table(), repeats),
        "facet": _median_ms(lambda: ds.dataset(folder, format=facet, schema=stage_schema).to_table(), repeats),
        "run": _median_ms(
            lambda: ds.dataset(folder, format="parquet").to_table(filter=one_run, columns=["duration_ms"]), repeats
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000, 200_000])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    ways = {"ours": parquet_options(STAGE_EXECUTIONS), "pyarrow defaults": {"compression": "zstd"}}
    table_rows = []
    for count in args.rows:
        table = rows_of(count)
        results: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
        with tempfile.TemporaryDirectory(prefix="sw-parts-", dir="/tmp") as root:
            for round_ in range(2):  # alternate, so a change in machine speed hits both
                for way, options in ways.items():
                    folder = Path(root) / f"{way}-{round_}"
                    folder.mkdir()
                    results[way].append(measure(table, folder, options, args.repeats))
        medians = {way: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for way, rs in results.items()}
        ours, theirs = medians["ours"], medians["pyarrow defaults"]
        for way, m in medians.items():
            table_rows.append(
                [
                    f"{count:,}",
                    way,
                    f"{m['write']:.2f}",
                    f"{m['write'] / count * 1e3:.2f}",
                    f"{m['bytes']:,.0f}",
                    f"{m['scan']:.2f}",
                    f"{m['facet']:.2f}",
                    f"{m['run']:.2f}",
                ]
            )
        table_rows.append(
            [
                "",
                "ours / defaults",
                f"{ours['write'] / theirs['write']:.2f}",
                "",
                f"{ours['bytes'] / theirs['bytes']:.2f}",
                f"{ours['scan'] / theirs['scan']:.2f}",
                f"{ours['facet'] / theirs['facet']:.2f}",
                f"{ours['run'] / theirs['run']:.2f}",
            ]
        )
    print_table(
        f"One stage_executions part, written and read (CPU ms, median of {args.repeats} x 2 rounds)",
        ["rows", "options", "write ms", "µs/row", "bytes", "full scan ms", "stage facet ms", "one run ms"],
        table_rows,
    )


if __name__ == "__main__":
    main()
