"""The projection is a fold over events: order-tolerant, deterministic, crash-aware."""

from __future__ import annotations

import copy
import json
import uuid
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.ingest._dedup import Deduplicator
from stagewatch.daemon.projection._projection import Projector
from stagewatch.daemon.projection._runstate import RunState, ended_add, ended_has
from stagewatch.daemon.projection._schema import validate_event
from stagewatch.daemon.projection._stages import STAGE_ROW_FIELDS, stage_lines_bytes
from stagewatch.daemon.query._readmodels import audit_json_chunks, load_audit
from stagewatch.daemon.tables._store import STAGE_EXECUTIONS, Store

RUN = str(uuid.UUID(int=7))
T0 = 1_790_000_000_000_000_000


def ev(type_: str, seq: int, client: str = "c1", **fields) -> object:
    return validate_event(
        {"v": 1, "type": type_, "client_id": client, "seq": seq, "ts_ns": T0 + seq * 1_000_000, "run_id": RUN, **fields}
    )


def finished(seq: int, span: int, stage: str = "detection", client: str = "c1", failed: bool = False) -> object:
    extra = {"error_type": "ValueError", "error_message": "bad"} if failed else {}
    return ev(
        "stage_failed" if failed else "stage_finished",
        seq,
        client,
        stage=stage,
        span=span,
        start_ts_ns=T0 + seq * 1_000_000 - 2_000_000,
        duration_ms=2.0,
        rss_peak_mb=10.0,
        **extra,
    )


def history() -> list:
    return [
        ev("run_started", 1, pipeline="perception", host="h", pid=1),
        ev("stage_started", 2, stage="preprocessing", span=1),
        finished(3, 1, "preprocessing"),
        ev("stage_started", 4, stage="detection", span=2),
        ev(
            "artifact_saved",
            5,
            stage="detection",
            span=2,
            path=f"runs/{RUN}/stages/detection/a.png",
            kind="png",
            bytes=10,
        ),
        finished(6, 2, failed=True),
        ev("run_finished", 7, status="ok", duration_ms=9.0),
    ]


def fold(events: list) -> Projector:
    projector = Projector()
    for lsn, event in enumerate(events):
        projector.apply(event, lsn)
    return projector


def ended(projector: Projector) -> list[dict]:
    """The ended stages as their stages.jsonl lines hold them."""
    return [json.loads(line) for line in projector.output.stage_lines.get(RUN, b"").splitlines()]


def stage_rows(rows: dict[str, list]) -> list[dict]:
    return [dict(zip(STAGE_ROW_FIELDS, row, strict=True)) for row in rows["stage_executions"]]


def test_stage_rows_are_tuples_of_the_tables_columns_in_order() -> None:
    assert tuple(STAGE_EXECUTIONS.names) == STAGE_ROW_FIELDS


def test_a_run_folds_into_an_audit_trail_and_rows() -> None:
    projector = fold(history())
    run = projector.runs[RUN]
    assert run.status == "finished_with_failures" and run.complete and run.open == {}  # it went on to its end
    assert [s["status"] for s in ended(projector)] == ["ok", "failed"]
    assert ended(projector)[1]["artifacts"][0]["kind"] == "png"
    rows, _ = projector.output.take()
    assert [r["stage"] for r in stage_rows(rows)] == ["preprocessing", "detection"]
    run_rows = rows["runs"]
    assert run_rows[0]["failed_stage"] == "detection" and run_rows[0]["error_message"] == "bad"


def test_only_the_client_that_started_a_run_starts_or_finishes_it() -> None:
    """Another client's run_started takes nothing over and its run_finished ends nothing: both
    are counted as foreign, and the run's own events fold as before."""
    events = history()
    foreign = [
        ev("run_started", 8, client="c2", pipeline="other", host="x", pid=2),
        ev("run_finished", 9, client="c2", status="failed", duration_ms=1.0),
    ]
    projector = fold([events[0], *foreign, *events[1:]])
    run = projector.runs[RUN]
    assert projector.foreign_events == 2
    assert (run.pipeline, run.client_id, run.status) == ("perception", "c1", "finished_with_failures")
    assert run.counts["events"] == len(events) + 2
    assert [row["status"] for row in projector.output.take()[0]["runs"]] == ["finished_with_failures"]


def test_a_finish_that_arrives_before_its_start_is_not_undone() -> None:
    events = history()
    events[2], events[1] = events[1], events[2]
    projector = fold(events)
    assert [s["status"] for s in ended(projector)] == ["ok", "failed"]
    assert projector.runs[RUN].open == {}


def test_a_lost_client_crashes_its_open_stages_and_its_run() -> None:
    events = [*history()[:2], ev("client_lost", 1, client="daemon", lost_client_id="c1", last_seen_ns=T0 + 5_000_000)]
    projector = fold(events)
    assert projector.runs[RUN].status == "crashed"
    assert ended(projector) == []  # no stages.jsonl line: the crash is provisional (`_resume`)
    (crashed,) = projector.runs[RUN].provisional.values()
    assert crashed["status"] == "crashed" and crashed["duration_ms"] == 3.0
    assert [row["status"] for row in stage_rows(projector.output.take()[0])] == ["crashed"]
    assert projector.open_work() == {}


def _paused(take_between: bool) -> tuple[Projector, list[dict], list[dict]]:
    """A run whose client was declared lost during its detection stage, then sent again: the
    stage's real end and the run's end. `take_between`: the writer took the crash rows first."""
    events = [*history()[:4], ev("client_lost", 1, client="daemon", lost_client_id="c1", last_seen_ns=T0 + 5_000_000)]
    projector = fold(events)
    taken = projector.output.take()[0] if take_between else {"stage_executions": [], "runs": []}
    for lsn, event in enumerate([finished(9, 2), ev("run_finished", 10, status="ok", duration_ms=9.0)], start=10):
        projector.apply(event, lsn)
    rows = projector.output.take()[0]
    return projector, stage_rows(taken) + stage_rows(rows), taken["runs"] + rows["runs"]


def test_a_lost_client_that_sends_again_gets_its_real_ends_and_the_gap_noted() -> None:
    projector, stages, runs = _paused(take_between=False)
    run = projector.runs[RUN]
    assert [(row["stage"], row["status"]) for row in stages] == [("preprocessing", "ok"), ("detection", "ok")]
    assert [row["status"] for row in runs] == ["ok"]  # the crashed run row never left the projection
    assert projector.output.take_withdrawn() == [(RUN, 4)]
    assert run.status == "ok" and run.counts["crashed"] == 0 and run.errors == [] and run.lost == {}
    assert run.provisional == {} and not run.open
    (gap,) = run.gaps
    assert gap["client_id"] == "c1" and gap["stages_resumed"] == 1 and gap["silent_s"] >= 0


def test_crash_rows_already_written_are_withdrawn_by_the_loss_s_position() -> None:
    projector, stages, runs = _paused(take_between=True)
    assert [(row["stage"], row["status"], row["lsn"]) for row in stages] == [
        ("preprocessing", "ok", 2),
        ("detection", "crashed", 4),  # written before the client came back: the writer deletes it
        ("detection", "ok", 10),
    ]
    assert [(row["status"], row["lsn"]) for row in runs] == [("crashed", 4), ("ok", 11)]
    assert projector.output.take_withdrawn() == [(RUN, 4)] and projector.output.take_withdrawn() == []


def test_a_loss_is_withdrawn_also_for_a_run_reopened_from_its_audit_trail() -> None:
    """Past the grace period a crashed run is forgotten but for its audit trail; the client's
    next event reopens it from there (`ReadModelWriter.reopen`), and the crash is still provisional."""
    events = [*history()[:4], ev("client_lost", 1, client="daemon", lost_client_id="c1", last_seen_ns=T0 + 5_000_000)]
    audit = json.loads(fold(events).runs[RUN].audit_head(0, 0))
    projector = Projector()
    projector.reopen(RunState.from_state(audit))
    projector.apply(finished(9, 2), 10)
    projector.apply(ev("run_finished", 10, status="ok", duration_ms=9.0), 11)
    assert [s["status"] for s in ended(projector)] == ["ok"] and projector.runs[RUN].status == "ok"
    assert projector.output.take_withdrawn() == [(RUN, 4)]


def test_a_lost_worker_crashes_only_its_own_stages() -> None:
    events = [
        history()[0],
        ev("stage_started", 1, client="worker", stage="detection", span=1),
        ev("client_lost", 1, client="daemon", lost_client_id="worker", last_seen_ns=T0 + 9_000_000),
    ]
    projector = fold(events)
    assert projector.runs[RUN].status == "running"
    assert [s["status"] for s in projector.runs[RUN].provisional.values()] == ["crashed"]


def test_an_expired_run_is_forgotten_with_its_pending_output_and_never_comes_back() -> None:
    other = str(uuid.UUID(int=8))
    another = [
        ev("log", 8, run_id=other, level="INFO", message="kept"),
        ev("run_finished", 9, run_id=other, status="ok", duration_ms=1.0),
    ]
    projector = fold([*history(), *another, ev("run_expired", 1, client="daemon", ended_ns=T0)])
    assert RUN not in projector.runs and other in projector.runs and projector.output.take_expired() == [RUN]
    rows, lines = projector.output.take()  # what the replay had not written yet of it is dropped
    assert {row["run_id"] for row in rows["runs"]} == {other} and rows["stage_executions"] == [] and RUN not in lines
    assert [row["message"] for row in rows["logs"]] == ["kept"]
    restored = Projector.from_state(copy.deepcopy(projector.to_state()))
    for later in (projector, restored):  # a worker's spool that comes after the removal, say
        later.apply(finished(20, 9), 20)
        assert RUN not in later.runs and later.late_events == 1 and later.output.take()[0]["stage_executions"] == []


def test_state_round_trips_through_the_checkpoint() -> None:
    projector = fold(history()[:4])
    restored = Projector.from_state(copy.deepcopy(projector.to_state()))
    for lsn, event in enumerate(history()[4:], start=4):
        projector.apply(event, lsn)
        restored.apply(event, lsn)
    assert restored.runs == projector.runs
    assert [r["stage"] for r in stage_rows(restored.output.take()[0])] == ["detection"]  # the rows after it


_MEGABYTES = st.none() | st.floats(0, 1e6, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            # Lone surrogates cannot come off the wire (msgpack strings are UTF-8; the client
            # escapes a path's), so the fold never meets them.
            "input_path": st.text(
                st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20
            ),
            "sample_id": st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
            "parent_span": st.integers(1, 2**63 - 1),
            "output_paths": st.lists(st.just("/out/a,b\n.png"), max_size=3),
            "rss_start_mb": _MEGABYTES,
            "rss_peak_mb": _MEGABYTES,
            "rss_end_mb": _MEGABYTES,
            "gpu_peak_mb": _MEGABYTES,
            "gpu_source": st.sampled_from(["torch", "nvml", "cupy+torch"]),
            "gpu_devices": st.dictionaries(st.sampled_from(["0", "1", "7"]), st.floats(0, 1e5), max_size=2),
        },
    )
)
def test_a_stage_that_sends_only_its_end_is_recorded_as_one_that_sent_both(fields: dict) -> None:
    """The end-first stage (the common case) takes a shorter path: the same line and row."""
    start = ev("stage_started", 2, stage="detection", span=1)
    end = ev("stage_finished", 3, stage="detection", span=1, start_ts_ns=T0 + 1_000_000, duration_ms=2.5, **fields)
    both, alone = fold([history()[0], start, end]), fold([history()[0], end])
    assert ended(alone) == ended(both) and len(ended(alone)) == 1
    assert stage_bytes(alone) == stage_bytes(both)
    (row_alone,), (row_both,) = stage_rows(alone.output.take()[0]), stage_rows(both.output.take()[0])
    assert (row_alone.pop("lsn"), row_both.pop("lsn")) == (1, 2)  # the positions of the ends
    assert row_alone == row_both
    assert alone.runs[RUN].counts == {**both.runs[RUN].counts, "events": 2}


def stage_bytes(projector: Projector) -> bytes:
    return bytes(projector.output.stage_lines[RUN])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=20))
def test_redelivery_through_the_deduplicator_changes_nothing(redelivered: list[int]) -> None:
    events = history()
    delivered = events + [events[i] for i in redelivered]
    dedup, projector = Deduplicator(), Projector()
    for lsn, event in enumerate(delivered):
        if not dedup.seen(event.client_id, event.seq):
            dedup.mark(event.client_id, event.seq)
            projector.apply(event, lsn)
    assert projector.runs == fold(events).runs


@pytest.mark.parametrize("running", [0, 1, 2])
@pytest.mark.parametrize("ended", [0, 1, 3])
def test_the_audit_trail_holds_the_ended_stages_then_the_running_ones(tmp_path, ended: int, running: int) -> None:
    """audit.json is the head alone (each stage is on disk once: its line in stages.jsonl);
    load_audit assembles the trail, whole, paged, or streamed as one JSON document."""
    store, run = Store(DaemonHome(tmp_path)), RunState(RUN)
    # spans from 1, as events give them
    entries = [{"stage": "s", "span": span, "message": "a,b\\n"} for span in range(1, ended + 1)]
    written = store.write_stage_lines(RUN, 0, stage_lines_bytes(entries))
    store.write_stage_lines(RUN, written, stage_lines_bytes([{"stage": "s", "span": 99}]))  # past the head's bytes
    run.open = {f"c:{span}": {"stage": "open", "span": span} for span in range(running)}
    store.write_audit_head(RUN, run.start_ns, run.audit_head(written, None))
    head = json.loads(DaemonHome(tmp_path).audit(RUN).read_text())
    assert "stages" not in head and head["stages_bytes"] == written
    every = entries + list(run.open.values())
    assert load_audit(tmp_path, RUN)["stages"] == every
    whole = json.loads(b"".join(audit_json_chunks(tmp_path, RUN)))
    assert whole["stages"] == every and whole["schema"] == "stagewatch.audit/1"
    for offset in range(len(every) + 1):
        page = load_audit(tmp_path, RUN, offset=offset, limit=2)
        assert page["stages"] == every[offset : offset + 2]
        assert page["stages_page"] == {"offset": offset, "limit": 2, "total": len(every)}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 12)), max_size=40))
def test_marking_a_group_at_once_marks_what_marking_each_event_does(keys: list[tuple[str, int]]) -> None:
    """The group path (`mark_events`, with its fast path past the watermark) against `mark`:
    in order, out of order, repeated, and after a gap."""
    events = [SimpleNamespace(client_id=client, seq=seq) for client, seq in keys]
    one_by_one, at_once = Deduplicator(), Deduplicator()
    for event in events:
        one_by_one.mark(event.client_id, event.seq)
    at_once.mark_events(events)
    assert at_once.to_state() == one_by_one.to_state()
    assert all(at_once.seen(client, seq) for client, seq in keys)


def test_a_start_that_comes_long_after_its_end_never_reopens_the_stage() -> None:
    """A pipeline spools a batch while the daemon is down; its events may be logged after
    60,000 later ones (found by the kill -9 fault run): a start logged after its own end, once
    4,096 other stages had ended, reopened the stage, and the run's end crashed it: its row twice."""
    events = [ev("run_started", 1, pipeline="perception", host="h", pid=1)]
    events += [finished(1 + span, span) for span in range(1, 10_002)]  # 10,001 stages end in order
    events.append(ev("stage_started", 20_000, stage="detection", span=5))  # span 5's start, late
    events.append(ev("run_finished", 20_001, status="ok", duration_ms=9.0))
    events.append(ev("client_lost", 1, client="daemon", lost_client_id="c1", last_seen_ns=T0 + 30_000_000_000))
    projector = fold(events)
    rows = projector.output.take()[0]["stage_executions"]
    assert len(rows) == 10_001 and projector.runs[RUN].open == {}  # the lost client crashed nothing
    assert projector.runs[RUN].status == "ok"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=60), unique=True))
def test_ended_spans_are_kept_as_ranges_that_answer_as_a_set_would(spans: list[int]) -> None:
    ended: dict[str, list[int]] = {}
    for span in spans:
        ended_add(ended, "c", span)
        ended_add(ended, "c", span)  # twice: no change
    bounds = ended.get("c", [])
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)  # disjoint, merged ranges
    assert all(bounds[i] < bounds[i + 1] for i in range(0, len(bounds) - 1, 2))
    for span in range(0, 62):
        assert ended_has(ended, "c", span) == (span in spans)
    assert not ended_has(ended, "other", spans[0] if spans else 1)


def test_a_checkpoint_from_before_ranges_is_read_into_them() -> None:
    run = RunState.from_state({"run_id": RUN, "ended": {"c1:3": None, "c1:4": None, "c2:9": None}})
    assert run.ended == {"c1": [3, 5], "c2": [9, 10]}
    assert RunState.from_state(run.to_state()).ended == run.ended


def test_a_stage_open_through_two_losses_of_its_client_crashes_and_ends_each_time() -> None:
    """Paused past the client timeout twice inside its first stage (a long C call that holds the
    GIL, Ctrl-Z twice): the first withdrawal left the client's ended ranges empty, and the second
    loss failed in projection (set aside in quarantine): the run was not crashed."""
    lost = ev("client_lost", 1, client="daemon", lost_client_id="c1", last_seen_ns=T0 + 5_000_000)
    heartbeat = ev("heartbeat", 5, rss_mb=10.0)
    again = ev("client_lost", 2, client="daemon", lost_client_id="c1", last_seen_ns=T0 + 6_000_000)
    events = [history()[0], ev("stage_started", 2, stage="detection", span=1), lost, heartbeat, again]
    projector = fold(events)
    assert projector.runs[RUN].status == "crashed" and projector.runs[RUN].counts["crashed"] == 1
    projector.apply(heartbeat, len(events))  # it sent again: the stage runs on, then ends
    projector.apply(finished(9, 1), len(events) + 1)
    projector.apply(ev("run_finished", 10, status="ok", duration_ms=9.0), len(events) + 2)
    assert projector.runs[RUN].status == "ok" and projector.runs[RUN].counts["crashed"] == 0
    assert [s["status"] for s in ended(projector)] == ["ok"]
