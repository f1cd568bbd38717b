"""Stage statistics from per-partition summaries: equal to numpy on the same rows, whatever
the split, and through the real daemon and CLI with whole, partial and stale days."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from stagewatch._protocol import pack_batch, pack_event
from stagewatch.daemon import Filters, _stagestats, query_stats
from stagewatch.daemon._readmodels import read_table, to_rows
from stagewatch.daemon._stagestats import (
    Measure,
    current_summaries,
    distribution,
    read_summary,
    refresh_summaries,
    source_of,
    stats_of,
    summarize,
    summary_path,
    write_summary,
)
from tests.conftest import DaemonProcess, wait_for

finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e300, max_value=1e300)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(finite | st.sampled_from([0.0, -0.0, 1.0, 5e-324]), max_size=40), min_size=1, max_size=6))
def test_a_distribution_of_any_split_equals_numpy_on_all_values(pieces: list[list[float]]) -> None:
    values = np.array([v for piece in pieces for v in piece], dtype=np.float64)
    got = distribution([Measure.of(np.array(piece, dtype=np.float64)) for piece in pieces])
    if len(values) == 0:
        assert got == {"mean": None, "median": None, "p95": None, "p99": None, "max": None}
        return
    expected = np.percentile(values, [50, 95, 99])
    np.testing.assert_array_equal([got["median"], got["p95"], got["p99"]], expected)  # exact, not close
    assert got["max"] == values.max()


def test_many_values_in_one_bucket_and_many_buckets() -> None:
    rng = np.random.default_rng(0)
    pieces = [np.full(5000, 500.0), rng.exponential(10.0, 20_000), rng.lognormal(0, 4, 20_000), np.zeros(3)]
    got = distribution([Measure.of(piece) for piece in pieces])
    expected = np.percentile(np.concatenate(pieces), [50, 95, 99])
    np.testing.assert_array_equal([got["median"], got["p95"], got["p99"]], expected)
    assert got["mean"] == pytest.approx(np.concatenate(pieces).mean(), rel=1e-12)


def _table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    durations = rng.exponential(5.0, rows)
    gpu = pa.array(rng.uniform(0, 1000, rows), mask=rng.random(rows) < 0.5)
    return pa.table(
        {
            "stage": rng.choice(["detection", "tracking"], rows).tolist(),
            "status": rng.choice(["ok", "ok", "failed", "crashed"], rows).tolist(),
            "duration_ms": durations,
            "rss_peak_mb": pa.array(500 + durations, mask=rng.random(rows) < 0.1),
            "gpu_peak_mb": gpu,
        }
    )


def test_summarize_groups_rows_by_stage_and_status_and_leaves_nulls_out() -> None:
    table = _table(1000, 1)
    groups = summarize(table)
    assert sorted((g.stage, g.status) for g in groups) == sorted(
        {(s, t) for s, t in zip(table["stage"].to_pylist(), table["status"].to_pylist(), strict=True)}
    )
    assert sum(g.rows for g in groups) == 1000
    gpu_values = sum(len(g.measures["gpu_peak_mb"].values) for g in groups)
    assert gpu_values == 1000 - table["gpu_peak_mb"].null_count
    for group in groups:
        for measure in group.measures.values():
            assert np.all(np.diff(measure.values) >= 0) and measure.counts.sum() == len(measure.values)
    assert summarize(table.slice(0, 0)) == []


def test_a_summary_round_trips_and_a_stale_or_damaged_one_is_not_used(tmp_path: Path) -> None:
    part = tmp_path / "part-00000000000000000001.parquet"
    pq.write_table(_table(500, 2), part)
    path, groups = tmp_path / "date=2026-11-01.arrow", summarize(_table(500, 2))
    write_summary(path, [(source_of(part), groups)])
    back = read_summary(path, [source_of(part)])
    assert [(g.stage, g.status, g.rows) for g in back] == [(g.stage, g.status, g.rows) for g in groups]
    for mine, theirs in zip(groups, back, strict=True):
        for name, measure in mine.measures.items():
            np.testing.assert_array_equal(theirs.measures[name].values, measure.values)
            np.testing.assert_array_equal(theirs.measures[name].counts, measure.counts)
    pq.write_table(_table(400, 3), part)  # rewritten (as retention does): another size/mtime
    assert read_summary(path, [source_of(part)]) is None
    path.write_bytes(path.read_bytes()[:100])
    assert read_summary(path, [{"part": part.name}]) is None
    assert read_summary(tmp_path / "missing.arrow", []) is None


def test_a_day_of_several_parts_is_summarized_part_by_part_and_answers_as_its_rows_do(tmp_path: Path) -> None:
    """A day too big to be one part keeps its capped parts: its summary holds a batch per part
    (neither the daemon nor a reader holds the day's rows at once) and is stale once any part
    changes or another arrives."""
    tables = [_table(300 + 100 * n, n + 1) for n in range(3)]
    parts = [tmp_path / f"part-{n:020d}.parquet" for n in range(3)]
    for part, table in zip(parts, tables, strict=True):
        pq.write_table(table, part)
    path = tmp_path / "date=2026-11-01.arrow"
    write_summary(path, [(source_of(part), summarize(table)) for part, table in zip(parts, tables, strict=True)])
    sources = [source_of(part) for part in parts]
    by_parts = read_summary(path, sources)
    assert by_parts is not None and len({(g.stage, g.status) for g in by_parts}) < len(by_parts)
    _assert_same_stats(stats_of(by_parts), stats_of(summarize(pa.concat_tables(tables))))
    assert read_summary(path, sources[:2]) is None  # a part gone
    assert read_summary(path, [sources[0], *sources]) is None  # a part more
    late = tmp_path / f"part-{3:020d}.parquet"
    pq.write_table(_table(100, 9), late)
    assert read_summary(path, [*sources, source_of(late)]) is None  # a late part


# -- through the real daemon -------------------------------------------------------------------
NOW = datetime.now(UTC)
DAYS = 8  # today and the 7 days before: 5 aged (summarized), 3 fresh (read row by row)


def _history_events(rng: np.random.Generator) -> list[bytes]:
    events, seq = [], 0
    for day in range(DAYS):
        midnight = (NOW - timedelta(days=day)).replace(hour=0, minute=0, second=0, microsecond=0)
        for hour in (1, 11, 22):
            run_id, t = str(uuid.uuid4()), int((midnight + timedelta(hours=hour)).timestamp() * 1e9)
            if t > time.time_ns():
                continue
            base = {"v": 1, "client_id": "history", "run_id": run_id}
            seq += 1
            events.append(
                pack_event(
                    {**base, "seq": seq, "type": "run_started", "ts_ns": t, "pipeline": "p", "host": "h", "pid": 1}
                )
            )
            for span in range(1, 31):
                stage, scale = (("detection", 8.0), ("tracking", 2.0))[span % 2]
                seq += 1
                event = {
                    **base,
                    "seq": seq,
                    "type": "stage_finished",
                    "ts_ns": t,
                    "start_ts_ns": t,
                    "stage": stage,
                    "span": span,
                    "duration_ms": float(rng.exponential(scale)),
                    "rss_peak_mb": 100.0 + span,
                }
                if rng.random() < 0.1:
                    event.update(type="stage_failed", error_type="ValueError", error_message="bad frame")
                events.append(pack_event(event))
            seq += 1
            events.append(
                pack_event({**base, "seq": seq, "type": "run_finished", "ts_ns": t, "status": "ok", "duration_ms": 1.0})
            )
    return events


def _send(home: Path, events: list[bytes]) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 2000)
    socket.connect(f"ipc://{home / 'run' / 'ingest.sock'}")
    for batch_no, start in enumerate(range(0, len(events), 200), 1):
        socket.send(pack_batch("history", batch_no, events[start : start + 200]))
        socket.recv()  # the ack: durable
    socket.close()
    context.term()


def _aged_dates() -> list[str]:
    return [(NOW - timedelta(days=day)).strftime("%Y-%m-%d") for day in range(3, DAYS)]


@pytest.fixture(scope="module")
def aged_home(tmp_path_factory) -> Path:
    home = Path(str(tmp_path_factory.mktemp("s"))) / "home"
    daemon = DaemonProcess(home, env={"STAGEWATCH_RETENTION_CHECK_INTERVAL_S": "0.5"}).start()
    try:
        _send(home, _history_events(np.random.default_rng(7)))
        wait_for(lambda: len(current_summaries(home, _aged_dates())) == len(_aged_dates()), 60)
    finally:
        daemon.stop()
    return home


def _stats_cli(home: Path, *filters: str) -> dict[str, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", "stats", "--home", str(home), "--json", *filters],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return {entry["stage"]: entry for entry in json.loads(result.stdout)}


def _expected(
    home: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    stage: str | None = None,
    status: str | None = None,
) -> dict[str, np.ndarray]:
    rows = to_rows(read_table(home, "stage_executions"))
    picked: dict[str, list[float]] = {}
    for row in rows:
        start = row["start_time"]
        if (
            (since and start < since)
            or (until and start > until)
            or stage not in (None, row["stage"])
            or (status not in (None, row["status"]))
        ):
            continue
        picked.setdefault(row["stage"], []).append(row["duration_ms"])
    return {name: np.array(values) for name, values in picked.items()}


@pytest.mark.parametrize(
    "days_since, days_until, stage, status",
    [
        (None, None, None, None),
        (4.5, None, None, None),
        (6, 2, "detection", None),
        (None, None, "detection", "failed"),
        (DAYS, 0, None, "ok"),
    ],
)
def test_stats_equal_numpy_with_whole_partial_and_fresh_days(
    aged_home: Path, days_since, days_until, stage, status
) -> None:
    since = NOW - timedelta(days=days_since) if days_since is not None else None
    until = NOW - timedelta(days=days_until) if days_until is not None else None
    filters = [
        *(["--since", since.isoformat()] if since else []),
        *(["--until", until.isoformat()] if until else []),
        *(["--stage", stage] if stage else []),
        *(["--status", status] if status else []),
    ]
    got = _stats_cli(aged_home, *filters)
    expected = _expected(aged_home, since, until, stage, status)
    assert sorted(got) == sorted(expected)
    for name, durations in expected.items():
        d = got[name]["duration_ms"]
        np.testing.assert_array_equal([d["median"], d["p95"], d["p99"]], np.percentile(durations, [50, 95, 99]))
        assert got[name]["count"] == len(durations) and d["max"] == durations.max()
        assert d["mean"] == pytest.approx(durations.mean(), rel=1e-12)


def _approx_or_none(expected: float | None) -> object:
    """pytest.approx of a number; None stays None (pytest >= 9.2 refuses approx(None))."""
    return None if expected is None else pytest.approx(expected, rel=1e-12)


def test_stats_use_the_summaries_and_equal_the_row_by_row_answer(aged_home: Path, monkeypatch) -> None:
    from stagewatch.daemon import _query

    read_dates = []
    real_read = _query.read_table
    monkeypatch.setattr(_query, "read_table", lambda *a, **k: read_dates.append(a[3]) or real_read(*a, **k))
    fast = query_stats(aged_home, Filters())
    assert read_dates and not set(read_dates[0]) & set(_aged_dates())  # the aged days came from summaries
    monkeypatch.setattr(_query, "current_summaries", lambda home, dates: {})
    slow = query_stats(aged_home, Filters())
    assert [(e["stage"], e["count"], e["failure_rate"], e.get("bottleneck")) for e in fast] == [
        (e["stage"], e["count"], e["failure_rate"], e.get("bottleneck")) for e in slow
    ]
    for mine, theirs in zip(fast, slow, strict=True):
        for name in ("duration_ms", "rss_peak_mb", "gpu_peak_mb"):
            exact = {k: v for k, v in mine[name].items() if k != "mean"}
            assert exact == {k: v for k, v in theirs[name].items() if k != "mean"}
            assert mine[name]["mean"] == _approx_or_none(theirs[name]["mean"])
        assert mine["share_of_time"] == pytest.approx(theirs["share_of_time"], rel=1e-12)


def test_a_rewritten_partition_is_read_row_by_row_until_summarized_again(aged_home: Path, tmp_path: Path) -> None:
    import shutil

    home = tmp_path / "home"
    shutil.copytree(aged_home, home)
    date = _aged_dates()[0]
    (part,) = (home / "metrics" / "stage_executions" / f"date={date}").glob("part-*.parquet")
    table = pq.read_table(part)
    pq.write_table(table.filter(pc.equal(table["stage"], "tracking")), part)  # as retention rewrites a part
    got = _stats_cli(home)
    expected = _expected(home)
    assert got["detection"]["count"] == len(expected["detection"])  # the stale summary was not used
    assert date not in current_summaries(home, [date])
    daemon = DaemonProcess(home, env={"STAGEWATCH_RETENTION_CHECK_INTERVAL_S": "0.5"}).start()
    try:
        wait_for(lambda: date in current_summaries(home, [date]), 30)
    finally:
        daemon.stop()
    assert _stats_cli(home)["detection"]["count"] == len(expected["detection"])
    assert summary_path(home, date).exists()


def test_a_big_part_is_summarized_a_chunk_at_a_time_and_answers_as_its_rows_do(home: Path, monkeypatch) -> None:
    """A part from before parts were capped may hold a whole busy day: it is read and summarized
    a chunk at a time (a batch each, sharing the part's source), never whole."""
    monkeypatch.setattr(_stagestats, "SUMMARY_CHUNK_ROWS", 100)
    date = "2026-11-01"
    partition = home / "metrics" / "stage_executions" / f"date={date}"
    partition.mkdir(parents=True)
    table = _table(1_050, 7)
    pq.write_table(table, partition / "part-00000000000000000001.parquet", row_group_size=100)
    assert refresh_summaries(home, "2026-11-03") == 1
    (groups,) = current_summaries(home, [date]).values()
    _assert_same_stats(stats_of(groups), stats_of(summarize(table)))
    reader = pa.ipc.open_file(str(summary_path(home, date)))
    assert reader.num_record_batches == 11


def _assert_same_stats(ours: object, reference: object) -> None:
    """Equal, but for the sums behind means and shares of time: added in another order, they
    may differ in the last bit (counts, quantiles and maxima are order statistics: exact)."""
    if isinstance(reference, dict):
        assert ours.keys() == reference.keys()
        for key, value in reference.items():
            if key in ("mean", "share_of_time") and value is not None:
                assert ours[key] == pytest.approx(value, rel=1e-12)
            else:
                _assert_same_stats(ours[key], value)
    elif isinstance(reference, list):
        assert len(ours) == len(reference)
        for mine, theirs in zip(ours, reference, strict=True):
            _assert_same_stats(mine, theirs)
    else:
        assert ours == reference
