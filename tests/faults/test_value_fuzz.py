"""Values, not shapes (issue 12): hypothesis generates events that *pass* validation with
the most extreme values the limits allow (int64 edges, times near 2200, 10^12 ms, 10^9 MB,
NaN and infinities inside JSON, 30-deep extras, NUL and newlines in text) and sends them
through a real daemon beside an honest client. The daemon stays up, every valid event
lands exactly once, the honest client loses nothing, kill -9 + restart works, and rebuild
equals the live read models. ~2,100 events in CI; STAGEWATCH_FAULTS_LONG=1: ~10,200."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import hypothesis.strategies as st
import pytest
import zmq
from hypothesis import HealthCheck, given, settings

import stagewatch
from stagewatch import _protocol as protocol
from stagewatch._protocol import MAX_DURATION_MS, MAX_INT, MAX_MEGABYTES, MAX_TS_NS, pack_batch, pack_event
from stagewatch.daemon.projection._schema import validate_event
from stagewatch.daemon.query._readmodels import read_table, to_rows
from tests.conftest import DaemonProcess, wait_for
from tests.daemon.test_rebuild import _read_models

LONG = os.environ.get("STAGEWATCH_FAULTS_LONG") == "1"
EXAMPLES = 170 if LONG else 35
EVENTS = 60  # per example

edges = st.sampled_from
ints = st.one_of(edges([1, 2, MAX_INT, MAX_INT - 1]), st.integers(1, MAX_INT))
# The edges, and otherwise today: every distinct date is a partition of its own, and thousands
# of them (each written, merged and summarized) would test the disk rather than the values.
NOW_NS = time.time_ns()
times = st.one_of(edges([0, 1, MAX_TS_NS - 1]), st.integers(NOW_NS - 86_400 * 10**9, NOW_NS))
millis = st.one_of(edges([0.0, 5e-324, MAX_DURATION_MS]), st.floats(0, MAX_DURATION_MS))
megabytes = st.one_of(st.none(), edges([0.0, MAX_MEGABYTES]), st.floats(0, MAX_MEGABYTES))
# Any character UTF-8 can carry (lone surrogates cannot be packed at all: the client escapes them).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
path_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300)
names = st.one_of(
    edges(["detection", "a", "A" * 128, "x.y-z_1"]), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,40}", fullmatch=True)
)
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-MAX_INT - 1, MAX_INT), st.floats(), text)
json_values = st.recursive(
    json_leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=20
)


def _deep(depth: int, leaf: object) -> dict:
    value: object = leaf
    for _ in range(depth):
        value = {"d": value}
    return value  # type: ignore[return-value]


@st.composite
def stage_events(draw, run_id: str, client: str, spans: list[int]) -> list[dict]:
    events = []
    for seq, span in enumerate(spans, 2):
        failed = draw(st.booleans())
        event = protocol.stage_finished(
            client,
            run_id,
            draw(times),
            stage=draw(names),
            span=span,
            parent_span=draw(st.one_of(st.none(), ints)),
            sample_id=draw(st.one_of(st.none(), text)),
            input_path=draw(st.one_of(st.none(), path_text)),
            start_ts_ns=draw(times),
            duration_ms=draw(millis),
            output_paths=draw(st.lists(path_text, max_size=3)),
            rss_start_mb=draw(megabytes),
            rss_peak_mb=draw(megabytes),
            rss_end_mb=draw(megabytes),
            gpu_peak_mb=draw(megabytes),
            error=(draw(text), draw(text), draw(text)) if failed else None,
        )
        events.append({**event, "seq": seq})
    return events


@st.composite
def histories(draw) -> tuple[str, str, list[dict]]:
    run_id, client = str(uuid.uuid4()), uuid.uuid4().hex
    spans = draw(st.lists(ints, min_size=EVENTS - 3, max_size=EVENTS - 3, unique=True))
    config = {
        "edges": [MAX_INT, -MAX_INT - 1, float("nan"), float("inf")],
        "deep": _deep(30, draw(json_leaves)),
        "wide": draw(json_values),
    }
    start = protocol.run_started(
        client,
        run_id,
        draw(times),
        pipeline=draw(names),
        config=config,
        host=draw(text),
        pid=draw(ints),
        dataset=None,
        argv=draw(st.lists(text, max_size=5)),
    )
    log = protocol.log(
        client,
        run_id,
        draw(times),
        level="INFO",
        message=draw(text),
        stage=draw(st.one_of(st.none(), names)),
        extra={"x": _deep(30, draw(json_leaves)), "y": draw(json_values)},
    )
    end = protocol.run_finished(
        client,
        run_id,
        draw(times),
        status="failed",
        duration_ms=draw(millis),
        stages_failed=draw(ints),
        dropped_events=draw(ints),
        error_type=None,
        error_message=None,
    )
    events = [{**start, "seq": 1}, *draw(stage_events(run_id, client, spans))]
    events += [{**log, "seq": len(events) + 1}, {**end, "seq": len(events) + 2}]
    return run_id, client, events


def _send(daemon: DaemonProcess, client: str, events: list[dict]) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(f"ipc://{daemon.socket_path}")
    try:
        for number, start in enumerate(range(0, len(events), 100), 1):
            socket.send(pack_batch(client, number, [pack_event(e) for e in events[start : start + 100]]))
            assert socket.poll(20_000), "no acknowledgement"
            socket.recv()
    finally:
        socket.close(0)
        context.term()


def _first_difference(live: dict, rebuilt: dict, where: str = "") -> str:
    """Where two nested read-model snapshots first differ, in a line (a failure's message)."""
    if isinstance(live, dict) and isinstance(rebuilt, dict):
        for key in sorted(set(live) | set(rebuilt), key=str):
            if live.get(key) != rebuilt.get(key):
                return _first_difference(live.get(key), rebuilt.get(key), f"{where}/{key}")
    if isinstance(live, list) and isinstance(rebuilt, list) and len(live) == len(rebuilt):
        for index, (a, b) in enumerate(zip(live, rebuilt, strict=True)):
            if a != b:
                return _first_difference(a, b, f"{where}[{index}]")
    return f"{where}: live {str(live)[:300]!r} != rebuilt {str(rebuilt)[:300]!r}"


@pytest.mark.timeout(1500 if LONG else 300)  # the long version sends five times the examples
def test_extreme_valid_values_cost_nothing_and_rebuild_equals_live(home) -> None:
    # Retention off: a run whose events say 1970 has expired, and retention rightly removes
    # it from the live read models, which a rebuild (no retention) would then not equal.
    forever = {"STAGEWATCH_RETENTION_RUNS": "forever", "STAGEWATCH_RETENTION_EVENTS": "forever"}
    daemon = DaemonProcess(home, env=forever).start()
    sent: dict[str, int] = {}
    try:

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(histories())
        def through_the_daemon(history: tuple[str, str, list[dict]]) -> None:
            run_id, client, events = history
            for event in events:
                validate_event(event)  # every one passes: the point is what comes after
            with stagewatch.init(pipeline="honest", home=home) as honest:
                with honest.stage("detection", sample_id="before"):
                    pass
                _send(daemon, client, events)
                with honest.stage("detection", sample_id="after"):
                    pass
            sent[run_id] = sum(e["type"].startswith("stage_") for e in events)
            audit = daemon.audit(honest.id)
            assert audit["counts"]["ok"] == 2 and daemon.process.poll() is None

        through_the_daemon()
        total = sum(sent.values())
        rows = wait_for(lambda: (t := read_table(home, "stage_executions")).num_rows >= total + 2 * len(sent) and t)
        by_run = {}
        for row in to_rows(rows.select(["run_id"])):
            by_run[row["run_id"]] = by_run.get(row["run_id"], 0) + 1
        assert {run: by_run.get(run) for run in sent} == sent  # each valid event once
        status = daemon.status()["stats"]
        assert status["invalid"] == 0 and status["unprojectable"] == 0 and status["internal_errors"] == 0
        daemon.kill()  # kill -9, then the home opens again
        daemon.start()
        assert daemon.stop() == 0
        live = _read_models(home)
        rebuilt = subprocess.run(
            [sys.executable, "-m", "stagewatch.cli", "rebuild", "--home", str(home), "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert json.loads(rebuilt.stdout)["events_replayed"] >= total
        rebuilt_models = _read_models(home)
        assert rebuilt_models == live, _first_difference(live, rebuilt_models)
    finally:
        if daemon.process is not None:
            daemon.kill()
