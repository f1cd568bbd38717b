"""Stage statistics: exact count, failure rate, mean, median/p95/p99 and max per stage, from
summaries that combine across partitions without merging their values.

A summary holds, for each (stage, status), its row count and, per measure (duration, RSS
and GPU peak), the sorted non-null values, their sum and a histogram over the top 16 bits
of each value (sign, exponent and 4 mantissa bits: buckets about 4% wide). An order
statistic of many summaries together is then found without sorting them together: the
summed histograms say which bucket holds rank r and how many values come before it, and
only that bucket's values (one slice of each sorted array, found by binary search) are
gathered and partitioned. Quantiles interpolate as numpy.percentile's default (linear).

Aged, compacted partitions do not change, so the daemon writes each one's summary once
(`index/stage-stats/date=D.arrow`: Arrow IPC, memory-mapped when read). `stats` over a
month then reads thirty small files, and of their values only the pages its binary searches
touch; the days not aged yet are summarized from their rows on the fly. A summary holds a
record batch per part of its day (a day too big to be one part keeps its capped parts:
`_compaction.FULL_PART_ROWS`), each naming the part it was made from (name, size, mtime) and
written one at a time, so that neither the daemon nor a reader holds a whole busy day's rows:
when retention rewrites a part or a late part arrives, the summary no longer matches and the
rows are read instead, until the daemon writes it again.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stagewatch._home import Home, partition_date
from stagewatch.daemon._compaction import quarantine_damaged
from stagewatch.daemon._store import PART_PREFIX

MEASURES = ("duration_ms", "rss_peak_mb", "gpu_peak_mb")
STATS_COLUMNS = ["stage", "status", *MEASURES]  # what a summary is made from
PERCENTILES = (0.5, 0.95, 0.99)
KEY_SHIFT = 48  # a bucket is the top 64 - 48 = 16 bits of a value's order-preserving integer
FORMAT = "stagewatch.stage-stats/2"  # /1 described one part in the schema: read as stale, rewritten


@dataclass(frozen=True)
class Measure:
    """One measure's non-null values in one group: sorted, with their sum and histogram."""

    values: np.ndarray
    total: float
    keys: np.ndarray  # the buckets present, ascending
    counts: np.ndarray  # values in each

    @classmethod
    def of(cls, values: np.ndarray) -> Measure:
        values = np.sort(values[~np.isnan(values)])
        values += 0.0  # -0.0 becomes 0.0: equal values share a bucket
        keys = _sortable(values) >> KEY_SHIFT
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
        return cls(values, float(values.sum()), keys[starts], np.diff(np.r_[starts, len(values)]).astype(np.int64))


@dataclass(frozen=True)
class Group:
    """The rows of one (stage, status) in one partition or table."""

    stage: str
    status: str
    rows: int
    measures: dict[str, Measure]


def summarize(table: pa.Table) -> list[Group]:
    """Pure: rows with `stage`, `status` and the measure columns -> a Group per (stage, status)."""
    if table.num_rows == 0:
        return []
    stage_names, stage_codes = _codes(table["stage"])
    status_names, status_codes = _codes(table["status"])
    pair = stage_codes * len(status_names) + status_codes
    if len(stage_names) * len(status_names) < 2**15:
        pair = pair.astype(np.int16)  # few pairs: numpy's stable sort orders 16-bit codes by radix, in linear time
    order = np.argsort(pair, kind="stable")
    bounds = np.r_[0, np.flatnonzero(np.diff(pair[order])) + 1, len(order)]
    columns = {name: table[name].to_numpy() for name in MEASURES}  # nulls become NaN
    groups = []
    for start, end in itertools.pairwise(bounds):
        rows = order[start:end]
        stage, status = divmod(int(pair[rows[0]]), len(status_names))
        measures = {name: Measure.of(values[rows]) for name, values in columns.items()}
        groups.append(Group(stage_names[stage], status_names[status], int(end - start), measures))
    return groups


def stats_of(groups: Iterable[Group]) -> list[dict[str, Any]]:
    """Per stage: count, failure rate, distribution of each measure, share of the total time;
    the stage with the largest share is marked as the bottleneck."""
    by_stage: dict[str, list[Group]] = defaultdict(list)
    for group in groups:
        by_stage[group.stage].append(group)
    total = sum(g.measures["duration_ms"].total for stage in by_stage.values() for g in stage)
    result = []
    for stage, stage_groups in sorted(by_stage.items()):
        rows = sum(g.rows for g in stage_groups)
        entry: dict[str, Any] = {
            "stage": stage,
            "count": rows,
            "failure_rate": sum(g.rows for g in stage_groups if g.status != "ok") / rows,
        }
        for name in MEASURES:
            entry[name] = distribution([g.measures[name] for g in stage_groups])
        duration = sum(g.measures["duration_ms"].total for g in stage_groups)
        entry["share_of_time"] = duration / total if total else 0.0
        result.append(entry)
    if result:
        max(result, key=lambda e: e["share_of_time"])["bottleneck"] = True
    return result


def distribution(measures: list[Measure]) -> dict[str, float | None]:
    """Mean, median, p95, p99 and max of the values of all `measures` together."""
    n = sum(len(m.values) for m in measures)
    if n == 0:
        return {"mean": None, "median": None, "p95": None, "p99": None, "max": None}
    virtual = [(n - 1) * q for q in PERCENTILES]
    neighbours = [(math.floor(h), min(math.floor(h) + 1, n - 1)) for h in virtual]
    ranks = sorted({rank for pair in neighbours for rank in pair})
    found = dict(zip(ranks, order_statistics(measures, ranks), strict=True))
    median, p95, p99 = (_lerp(found[lo], found[hi], h - lo) for h, (lo, hi) in zip(virtual, neighbours, strict=True))
    return {
        "mean": sum(m.total for m in measures) / n,
        "median": median,
        "p95": p95,
        "p99": p99,
        "max": max(float(m.values[-1]) for m in measures if len(m.values)),
    }


def order_statistics(measures: list[Measure], ranks: list[int]) -> list[float]:
    """The values at 0-based `ranks` of all `measures`' values in one sorted order."""
    keys = np.concatenate([m.keys for m in measures])
    counts = np.concatenate([m.counts for m in measures])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    bucket_keys, cumulative = keys[starts], np.cumsum(np.add.reduceat(counts, starts))
    # Each rank's bucket (the first whose running count passes it) and its place there.
    buckets = np.searchsorted(cumulative, ranks, side="right")
    within = np.asarray(ranks) - np.where(buckets > 0, cumulative[np.maximum(buckets - 1, 0)], 0)
    found = {}
    for bucket in np.unique(buckets):
        places = within[buckets == bucket]
        values = np.partition(_bucket_values(measures, int(bucket_keys[bucket])), places)  # one copy a bucket
        found.update(zip(np.asarray(ranks)[buckets == bucket].tolist(), values[places].tolist(), strict=True))
    return [found[rank] for rank in ranks]


def _bucket_values(measures: list[Measure], key: int) -> np.ndarray:
    low = _from_sortable(key << KEY_SHIFT)
    high = _from_sortable((key << KEY_SHIFT) | ((1 << KEY_SHIFT) - 1))
    return np.concatenate(
        [m.values[np.searchsorted(m.values, low, "left") : np.searchsorted(m.values, high, "right")] for m in measures]
    )


def _sortable(values: np.ndarray) -> np.ndarray:
    """float64 -> int64 in the same order (negative floats have their magnitude bits flipped)."""
    bits = values.view(np.int64)
    return bits ^ ((bits >> 63) & np.int64(0x7FFF_FFFF_FFFF_FFFF))  # the mask is 0 for non-negative values


def _from_sortable(key: int) -> float:
    bits = np.int64(key)
    return float((bits ^ np.int64(0x7FFF_FFFF_FFFF_FFFF) if bits < 0 else bits).view(np.float64))


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation, to the last bit: from b's side when t >= 0.5."""
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def _codes(column: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """A string column's distinct values and each row's index among them (read as a
    dictionary from Parquet, the column is one already)."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    encoded = column.unify_dictionaries().combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy().astype(np.int64, copy=False)


# -- summaries on disk ---------------------------------------------------------------------
def summary_path(home: Path | Home, date: str) -> Path:
    return Home.of(home).stage_stats_summary(date)


def source_of(part: Path) -> dict[str, Any]:
    """What identifies a part's content: a rewritten or replaced part differs in one of these."""
    stat = part.stat()
    return {"part": part.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_summary(path: Path, parts: Iterable[tuple[dict[str, Any], list[Group]]]) -> None:
    """One Arrow IPC file, a record batch per part or chunk of one (`source_of` the part, and its
    groups): the measures' sorted values in one column, what is where (histograms, sums, row
    counts, the source) in the batch's metadata. Taken one at a time; written under a
    temporary name, renamed (a part that fails to read leaves no file)."""
    schema = pa.schema([("values", pa.float64())], metadata={"stagewatch": json.dumps({"format": FORMAT})})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for source, groups in parts:
                described, values = _described(groups)
                metadata = {"stagewatch": json.dumps({"source": source, "groups": described})}
                writer.write_batch(pa.record_batch([pa.array(values)], schema=schema), custom_metadata=metadata)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def _described(groups: list[Group]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """A part's groups as metadata, and their values in one array (where each measure's are)."""
    described, arrays, offset = [], [], 0
    for group in groups:
        measures = {}
        for name, measure in group.measures.items():
            measures[name] = {
                "offset": offset,
                "count": len(measure.values),
                "total": measure.total,
                "keys": measure.keys.tolist(),
                "counts": measure.counts.tolist(),
            }
            arrays.append(measure.values)
            offset += len(measure.values)
        described.append({"stage": group.stage, "status": group.status, "rows": group.rows, "measures": measures})
    return described, np.concatenate(arrays) if arrays else np.zeros(0)


def read_summary(path: Path, sources: list[dict[str, Any]]) -> list[Group] | None:
    """The groups of the summary at `path` if it was made from exactly `sources` (in order);
    None if missing, stale or damaged. Values stay memory-mapped."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        if json.loads(reader.schema.metadata[b"stagewatch"]).get("format") != FORMAT:
            return None
        groups, made_from = [], []
        for index in range(reader.num_record_batches):
            batch, metadata = reader.get_batch_with_custom_metadata(index)
            described = json.loads(metadata[b"stagewatch"])
            if not made_from or made_from[-1] != described["source"]:  # a part's chunks share it
                made_from.append(described["source"])
            values = batch.column(0).to_numpy()
            groups += [_group(group, values) for group in described["groups"]]
        return groups if made_from == sources else None
    except (OSError, ValueError, KeyError, TypeError, IndexError, pa.ArrowException):
        return None


def _group(described: dict[str, Any], values: np.ndarray) -> Group:
    measures = {}
    for name, m in described["measures"].items():
        measures[name] = Measure(
            values[m["offset"] : m["offset"] + m["count"]],
            m["total"],
            np.array(m["keys"], np.int64),
            np.array(m["counts"], np.int64),
        )
    return Group(described["stage"], described["status"], described["rows"], measures)


def refresh_summaries(home: Path, cutoff: str) -> int:
    """Write the summary of every partition dated before `cutoff` that lacks a current one, a
    part at a time, and drop those of partitions that are gone; returns how many were written."""
    dates = partition_dates(home)
    aged = [date for date in dates if date < cutoff]
    current, written = current_summaries(home, aged), 0
    for date in aged:
        parts = _parts(home, date)
        if date in current or not parts:
            continue
        try:
            write_summary(summary_path(home, date), _part_summaries(parts))
        except (pa.ArrowInvalid, OSError):  # damaged: moved aside, and the rows are read no more
            if not quarantine_damaged(Home.of(home), parts):
                raise
            continue
        written += 1
    for date, path in Home.of(home).stage_stats_summaries().items():
        if date not in dates:
            path.unlink(missing_ok=True)
    return written


# A part is summarized this many rows at a time: a part written before parts were capped
# (`_compaction.FULL_PART_ROWS`) may hold a whole busy day.
SUMMARY_CHUNK_ROWS = 1 << 17


def _part_summaries(parts: list[Path]) -> Iterator[tuple[dict[str, Any], list[Group]]]:
    """(source, groups) of each chunk of each part, in order (a part's chunks share its source)."""
    for part in parts:
        source = source_of(part)  # before reading: a part replaced meanwhile makes the summary stale
        for batch in pq.ParquetFile(part).iter_batches(SUMMARY_CHUNK_ROWS, columns=STATS_COLUMNS):
            yield source, summarize(pa.Table.from_batches([batch]))


def current_summaries(home: Path, dates: Iterable[str]) -> dict[str, list[Group]]:
    """The summaries of those `dates` whose partition still holds exactly the parts summarized."""
    found = {}
    for date in dates:
        parts = _parts(home, date)
        if not parts:
            continue
        try:
            groups = read_summary(summary_path(home, date), [source_of(part) for part in parts])
        except FileNotFoundError:  # a part went (retention, compaction) as we looked
            groups = None
        if groups is not None:
            found[date] = groups
    return found


def partition_dates(home: Path) -> list[str]:
    """The dates of the stage_executions partitions, ascending."""
    return [partition_date(p) for p in Home.of(home).partitions("stage_executions")]


def _parts(home: Path, date: str) -> list[Path]:
    return sorted(Home.of(home).partition("stage_executions", date).glob(f"{PART_PREFIX}*.parquet"))
