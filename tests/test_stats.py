"""Stage statistics: exact (count, failure rate, mean, median/p95/p99, max per stage), equal to
numpy on the same rows, for rows in hand and through the real daemon and CLI over whole,
partial and fresh days."""

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
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from stagewatch._protocol import pack_batch, pack_event
from stagewatch.daemon import stage_stats
from stagewatch.daemon.query._readmodels import read_table, to_rows
from stagewatch.daemon.tables._tables import snapshot_files
from tests.conftest import DaemonProcess, wait_for

finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e300, max_value=1e300)


def _assert_percentiles(got: dict, values: np.ndarray) -> None:
    """median, p95 and p99 as numpy.percentile's default (linear) gives them: the same order
    statistics and interpolation weight. DuckDB interpolates from the lower neighbour where
    numpy, past the midpoint, does from the upper one: the results differ by the rounding of
    one product, a few units in the last place of the larger neighbour."""
    expected = np.percentile(values, [50, 95, 99])
    rounding = 4 * float(np.spacing(np.abs(values).max()))
    np.testing.assert_allclose([got["median"], got["p95"], got["p99"]], expected, rtol=0, atol=rounding)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(finite | st.sampled_from([0.0, -0.0, 1.0, 5e-324]), min_size=1, max_size=200),
    st.lists(st.sampled_from(["ok", "failed", "crashed"]), min_size=1, max_size=200),
)
def test_stats_of_rows_in_hand_equal_numpy(values: list[float], statuses: list[str]) -> None:
    rows = len(values)
    statuses = (statuses * rows)[:rows]
    table = pa.table(
        {
            "stage": ["detection"] * rows,
            "status": statuses,
            "duration_ms": values,
            "rss_peak_mb": pa.array([*values[:-1], None]),  # a stage without a reading
            "gpu_peak_mb": pa.array([float("nan")] * rows),  # NaN: no reading, as null
        }
    )
    (got,) = stage_stats(table)
    array = np.array(values)
    assert got["count"] == rows and got["failure_rate"] == sum(s != "ok" for s in statuses) / rows
    _assert_percentiles(got["duration_ms"], array)
    assert got["duration_ms"]["max"] == array.max()
    scale = float(np.abs(array).max())  # sums of values far apart cancel differently in another order
    assert got["duration_ms"]["mean"] == pytest.approx(float(np.mean(array / 1e10)) * 1e10, abs=1e-9 * scale + 1e-300)
    if rows > 1:
        _assert_percentiles(got["rss_peak_mb"], array[:-1])
    assert got["gpu_peak_mb"] == {"mean": None, "median": None, "p95": None, "p99": None, "max": None}
    assert got["bottleneck"] is True


def test_many_values_in_one_place_and_far_apart() -> None:
    rng = np.random.default_rng(0)
    pieces = [np.full(5000, 500.0), rng.exponential(10.0, 20_000), rng.lognormal(0, 4, 20_000), np.zeros(3)]
    values = np.concatenate(pieces)
    table = pa.table({"stage": ["s"] * len(values), "status": ["ok"] * len(values), "duration_ms": values})
    table = table.append_column("rss_peak_mb", pa.nulls(len(values), pa.float64()))
    table = table.append_column("gpu_peak_mb", pa.nulls(len(values), pa.float64()))
    (got,) = stage_stats(table)
    _assert_percentiles(got["duration_ms"], values)
    assert got["duration_ms"]["mean"] == pytest.approx(values.mean(), rel=1e-12)


def test_the_same_rows_in_another_order_give_the_same_figures() -> None:
    """The rows of a table compacted or rebuilt come in another order: `stats --json` gave means
    and shares that differed in their last digits after `stagewatch rebuild`."""
    rng = np.random.default_rng(3)
    values = np.round(rng.lognormal(1, 1.5, 200_000), 6)
    answers = set()
    for _ in range(8):
        order = rng.permutation(len(values))
        table = pa.table({"stage": ["s"] * len(values), "status": ["ok"] * len(values), "duration_ms": values[order]})
        (got,) = stage_stats(table)
        answers.add((got["duration_ms"]["mean"], got["share_of_time"]))
    assert len(answers) == 1, answers


# -- through the real daemon -------------------------------------------------------------------
NOW = datetime.now(UTC)
DAYS = 8  # today and the 7 days before: 5 aged (compacted), 3 fresh


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


def _compacted(home: Path, date: str) -> bool:
    """The day has rows in the table (the daemon's stop commits the rest)."""
    return len(snapshot_files(home, "stage_executions", [date])) >= 1


def _aged_dates() -> list[str]:
    return [(NOW - timedelta(days=day)).strftime("%Y-%m-%d") for day in range(3, DAYS)]


@pytest.fixture(scope="module")
def aged_home(tmp_path_factory) -> Path:
    home = Path(str(tmp_path_factory.mktemp("s"))) / "home"
    daemon = DaemonProcess(home, env={"STAGEWATCH_RETENTION_CHECK_INTERVAL_S": "0.5"}).start()
    try:
        _send(home, _history_events(np.random.default_rng(7)))
        # Every aged day in the table, each a file or a few: what stats read at scale.
        wait_for(lambda: all(_compacted(home, date) for date in _aged_dates()), 60)
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
    # The stages only: the row of the time outside them is tests/test_gaps.py's.
    return {entry["stage"]: entry for entry in json.loads(result.stdout) if not entry.get("outside_stages")}


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
def test_stats_equal_numpy_over_whole_partial_and_fresh_days(
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
        _assert_percentiles(d, durations)
        assert got[name]["count"] == len(durations) and d["max"] == durations.max()
        assert d["mean"] == pytest.approx(durations.mean(), rel=1e-12)


def test_stats_list_stages_in_pipeline_order_with_each_stage_s_own_memory(daemon: DaemonProcess) -> None:
    """`stagewatch stats` (text and JSON) lists stages in the order they ran, not the alphabet's;
    the stage that allocates shows it in its own memory, while the process's peak, labelled as
    such, is what every stage after it sees too."""
    import stagewatch
    from tests.conftest import sw

    run = stagewatch.init(pipeline="order", home=daemon.home)
    held = []
    for frame in range(3):
        with run.stage("zeta_decode", sample_id=f"f{frame}"):
            held.append(b"\1" * (64 << 20))  # 64 MB touched: the RSS rises by it
        nested = run.stage("mid_nested_postprocessing", sample_id=f"f{frame}")  # wider than the stage column
        with run.stage("alpha_infer", sample_id=f"f{frame}"), nested:
            pass
        held.clear()
    run.finish()
    assert run.flush(10)
    wait_for(lambda: len(read_table(daemon.home, "stage_executions")) == 9 or None)
    stats = json.loads(sw("stats", "--home", str(daemon.home), "--json").stdout)
    stats = [s for s in stats if not s.get("outside_stages")]  # the time outside stages comes last
    assert [s["stage"] for s in stats] == ["zeta_decode", "alpha_infer", "mid_nested_postprocessing"]
    own = {s["stage"]: s["own_mb"]["max"] for s in stats}
    assert own["zeta_decode"] >= 60 and own["alpha_infer"] < 30 and own["mid_nested_postprocessing"] < 30
    text = sw("stats", "--home", str(daemon.home)).stdout.splitlines()
    assert [line.split()[0] for line in text[1:4]] == ["zeta_decode", "alpha_infer", "mid_nested_postprocessing"]
    assert "own MB" in text[0] and "proc. peak" in text[0] and "peak RSS" not in text[0]
    headings = ["count", "mean ms", "median ms", "p95 ms", "p99 ms", "max ms", "own MB", "proc. peak MB", "time %"]
    for heading in headings:  # each column says its unit, and its values end where its heading ends
        end = text[0].index(heading) + len(heading)
        for row in text[1:4]:  # a stage name longer than the column's default width too
            assert row[end - 1] != " " and row[end : end + 1] in ("", " "), (heading, text[0], row)
