"""Values that pass the wire's shape but would poison what comes after (issue 12): refused
at the door with a reason, or set aside on their own, while every other client's rows
arrive, the daemon restarts after kill -9 and rebuild equals the live read models."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pyarrow as pa
import pytest

import stagewatch
from stagewatch import _protocol as protocol
from stagewatch._protocol import pack_batch, pack_event
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.projection._schema import validate_event
from stagewatch.daemon.projection._stages import STAGE_ROW_FIELDS
from stagewatch.daemon.query._readmodels import load_audit, read_table, to_rows
from stagewatch.daemon.tables._store import Store
from tests.conftest import DaemonProcess, wait_for
from tests.daemon.test_compaction import _in_process_daemon
from tests.daemon.test_daemon_faults import _send_raw

NOW = time.time_ns()


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _stage(run_id: str, seq: int, **changes) -> dict:
    event = protocol.stage_finished(
        "poisoner",
        run_id,
        NOW,
        stage="detection",
        span=seq,
        parent_span=None,
        sample_id=f"f{seq}",
        input_path=None,
        start_ts_ns=NOW - 10**6,
        duration_ms=1.0,
        output_paths=[],
        rss_start_mb=None,
        rss_peak_mb=None,
        rss_end_mb=None,
        gpu_peak_mb=None,
    )
    return {**event, "seq": seq, **changes}


POISON = {
    "span 2**64-1": {"span": 2**64 - 1},
    "parent_span 2**63": {"parent_span": 2**63},
    "duration 1e15 ms": {"duration_ms": 1e15},
    "start in the year 2300": {"start_ts_ns": 10_413_792_000 * 10**9},
    "rss 1e300 MB": {"rss_peak_mb": 1e300},
}


@pytest.mark.parametrize("change", POISON.values(), ids=POISON)
def test_a_value_no_read_model_can_hold_is_refused_by_validation(change: dict) -> None:
    with pytest.raises(ValueError):
        validate_event(_stage(str(uuid.uuid4()), 1, **change))


@pytest.mark.parametrize("where", ["config", "extra", "prediction"])
def test_json_values_deeper_than_the_limit_or_beyond_int64_are_refused(where: str) -> None:
    run_id = str(uuid.uuid4())
    events = {
        "config": lambda v: protocol.run_started(
            "c", run_id, NOW, pipeline="p", config=v, host="h", pid=1, dataset=None, argv=[]
        ),
        "extra": lambda v: protocol.log("c", run_id, NOW, level="INFO", message="m", extra=v),
        "prediction": lambda v: protocol.sample_result(
            "c", run_id, NOW, stage="s", sample_id="x", path=None, prediction=v
        ),
    }
    for value in ({"deep": _nested(995)}, {"big": 2**64}, {"ok": _nested(protocol.MAX_JSON_DEPTH - 2)}):
        event = {**events[where](value), "seq": 1}
        if "ok" in value:
            validate_event(event)
        else:
            with pytest.raises(ValueError):
                validate_event(event)


def test_poisoned_events_cost_only_themselves_through_the_real_daemon(daemon: DaemonProcess) -> None:
    victim = stagewatch.init(pipeline="victim", home=daemon.home)
    poisoner = str(uuid.uuid4())
    frames = [
        pack_batch("poisoner", n, [pack_event(_stage(poisoner, n, **change))])
        for n, change in enumerate(POISON.values(), 1)
    ]
    deep_log = protocol.log("poisoner", poisoner, NOW, level="INFO", message="deep", extra=_nested(995))
    frames.append(pack_batch("poisoner", 99, [pack_event({**deep_log, "seq": 99})]))
    for index in range(20):
        with victim.stage("detection", sample_id=f"v{index}"):
            if index == 10:
                _send_raw(daemon, frames)  # in the middle of the victim's stream
    victim.finish()
    assert victim.flush(10)
    rows = wait_for(lambda: (t := read_table(daemon.home, "stage_executions")).num_rows >= 20 and t)
    assert sorted(rows["sample_id"].to_pylist()) == sorted(f"v{i}" for i in range(20))
    status = wait_for(lambda: (s := daemon.status()) and s["stats"]["invalid"] >= len(frames) and s)
    assert status["stats"]["invalid"] == len(frames) and status["stats"]["unprojectable"] == 0
    daemon.kill()
    daemon.start()  # kill -9 and restart: the home still opens
    assert daemon.audit(victim.id)["counts"]["ok"] == 20


def test_the_client_keeps_a_hostile_config_and_hostile_names_inside_the_limits(daemon: DaemonProcess) -> None:
    """Through the public API: nothing raises into the pipeline, the run and its stage are
    recorded, and what could not be sent as it was is replaced by a note saying so."""
    for depth in (991, 2000):
        run = stagewatch.init(pipeline="p", home=daemon.home, config={"deep": _nested(depth), "big": 2**70})
        long_path, sample = "x" * 5000 + "\x00tail", "frame\x00047"
        with run.stage("detection", input_path=long_path, sample_id=sample):
            pass
        run.finish()
        audit = daemon.audit(run.id)
        assert set(audit["config"]) == {"_unsendable", "_text"} or set(audit["config"]) == {"_unsendable"}
        (stage,) = audit["stages"]
        assert len(stage["input_path"]) == protocol.MAX_TEXT_CHARS and stage["input_path"].endswith("chars]")
        assert stage["sample_id"] == "frame\\0047" and "\x00" not in stage["input_path"]
    assert daemon.status()["stats"]["invalid"] == 0


def test_a_path_that_is_not_utf8_is_kept_escaped(daemon: DaemonProcess) -> None:
    """`os.fsdecode` gives lone surrogates for a Latin-1 file name; msgpack cannot carry them."""
    import os

    latin1 = os.fsdecode(b"/data/caf\xe9.png")
    run = stagewatch.init(pipeline="p", home=daemon.home)
    with run.stage("detection", input_path=latin1, sample_id=latin1):
        pass
    run.finish()
    (stage,) = daemon.audit(run.id)["stages"]
    assert stage["input_path"] == stage["sample_id"] == "/data/caf\\udce9.png"


@pytest.mark.parametrize("as_tuples", [False, True], ids=["dict rows", "tuple rows (the fold's)"])
def test_a_row_that_cannot_be_stored_costs_only_itself(tmp_path, as_tuples: bool) -> None:
    store = Store(DaemonHome(tmp_path))
    rows = [
        {"run_id": "r", "stage": "s", "status": "ok", "span": span, "start_time": NOW, "end_time": NOW, "lsn": lsn}
        for lsn, span in enumerate([1, 2**64, 3])
    ]
    if as_tuples:
        tuples = [tuple(row.get(name) for name in STAGE_ROW_FIELDS) for row in rows]
        refused = store.write_rows("stage_executions", tuples, STAGE_ROW_FIELDS)
    else:
        refused = store.write_rows("stage_executions", rows)
    assert [(row["span"], "int64" in reason or "Overflow" in reason) for row, reason in refused] == [(2**64, True)]
    written = read_table(tmp_path, "stage_executions")
    assert sorted(written["span"].to_pylist()) == [1, 3]
    assert isinstance(written, pa.Table)


def test_an_event_that_fails_in_projection_is_set_aside_and_the_rest_fold(home, monkeypatch) -> None:
    from stagewatch.daemon.ingest._ingest import Group
    from stagewatch.daemon.projection._handlers import HANDLERS

    def broken(run, event, lsn, output) -> None:
        raise ZeroDivisionError("a bug in a handler")

    monkeypatch.setitem(HANDLERS, "log", broken)
    layout = DaemonHome(home)
    daemon = _in_process_daemon(home, bind=False)
    run_id = str(uuid.uuid4())
    events = [
        _stage(run_id, 1),
        {**protocol.log("poisoner", run_id, NOW, level="INFO", message="boom"), "seq": 2},
        _stage(run_id, 3),
    ]
    group = Group()
    daemon.ingest.take(group, [pack_event(e) for e in events], "poisoner")
    assert daemon.ingest.commit(group)
    daemon.flush(final=True)
    assert sorted(to_rows(read_table(home, "stage_executions").select(["span"]))[i]["span"] for i in range(2)) == [1, 3]
    (line,) = [json.loads(x) for p in layout.quarantine.glob("*.jsonl") for x in p.read_text().splitlines()]
    assert line["reason"] == "failed in projection: ZeroDivisionError: a bug in a handler" and line["lsn"] > 0
    assert daemon.stats.unprojectable == 1
    daemon.release()


@pytest.mark.parametrize(
    "args",
    [
        ["query", "--since", "99999999d"],
        ["stats", "--since", "1000000w"],
        ["export", "--since", "0001-01-01T00:00+14:00", "--output", "-"],
        ["query", "--until", "9999-12-31T23:59:59-14:00"],
    ],
)
def test_times_out_of_range_are_refused_in_words(home, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stagewatch.cli", *args, "--home", str(home)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "expected" in result.stderr


def test_a_client_whose_spool_waits_is_not_declared_lost(home) -> None:
    """A full disk keeps a finished client's spool out of the log; its run must end as its
    events say once they go in, not as crashed because the client went quiet meanwhile."""
    from stagewatch.daemon.ingest._ingest import Group

    layout = DaemonHome(home)
    daemon = _in_process_daemon(home, bind=False, client_timeout_s=0.01)
    run_id, client = str(uuid.uuid4()), "spooler"
    start = protocol.run_started(client, run_id, NOW, pipeline="p", config={}, host="h", pid=1, dataset=None, argv=[])
    group = Group()
    daemon.ingest.take(group, [pack_event({**start, "seq": 1})], client)
    assert daemon.ingest.commit(group)
    layout.spool.mkdir()
    (layout.spool / f"{client}-1.spool").write_bytes(b"")  # its events wait on disk
    daemon.ingest.last_seen[client] = 0.0  # silent for a long time
    daemon.maintenance.check_liveness()
    assert daemon.stats.clients_lost == 0 and not daemon.projector.runs[run_id].complete
    (layout.spool / f"{client}-1.spool").unlink()
    time.sleep(0.05)
    daemon.maintenance.check_liveness()
    assert daemon.stats.clients_lost == 1 and daemon.projector.runs[run_id].status == "crashed"
    daemon.release()


def test_an_event_for_a_closed_and_evicted_run_is_applied_and_rebuild_agrees(home) -> None:
    """A worker's spool, say, that arrives after its run was closed and forgotten: the run is
    reopened from its audit trail, the stage counted and its row written, as a replay does."""
    from stagewatch.daemon._rebuild import rebuild
    from stagewatch.daemon.ingest._ingest import Group
    from tests.daemon.test_rebuild import _read_models

    daemon = _in_process_daemon(home, bind=False, finished_run_grace_s=0)
    run_id, client = str(uuid.uuid4()), "poisoner"
    start = protocol.run_started(client, run_id, NOW, pipeline="p", config={}, host="h", pid=1, dataset=None, argv=[])
    end = protocol.run_finished(
        client,
        run_id,
        NOW,
        status="ok",
        duration_ms=5.0,
        stages_failed=0,
        dropped_events=0,
        error_type=None,
        error_message=None,
    )
    for batch in ([{**start, "seq": 1}, _stage(run_id, 2), {**end, "seq": 3}], [_stage(run_id, 4)]):
        group = Group()
        daemon.ingest.take(group, [pack_event(e) for e in batch], client)
        assert daemon.ingest.commit(group)
        daemon.flush()
        daemon.flush()  # the second flush evicts the finished run (no grace)
        assert run_id in daemon.projector.closed
    assert daemon.projector.late_events == 0
    daemon.flush(final=True)
    daemon.release()
    audit = load_audit(home, run_id)
    assert audit["counts"]["ok"] == 2 and audit["status"] == "ok" and len(audit["stages"]) == 2
    assert sorted(read_table(home, "stage_executions")["span"].to_pylist()) == [2, 4]
    live = _read_models(home)
    rebuild(home)
    assert _read_models(home) == live
