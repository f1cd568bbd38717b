"""One wire protocol: the builders in stagewatch._protocol make every event, the daemon's
msgspec structs accept exactly what they make, and docs/events.md lists those fields."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest

from stagewatch import _protocol as protocol
from stagewatch.daemon.projection._schema import EVENT_MODELS, as_dict, field_names, validate_event

RUN = "97e6a9e9-9d32-44f7-8151-5964cbf8ee95"  # fixed: test ids name it (parallel workers collect alike)
CLIENT = "c0ffee"
STAGE = {"stage": "detection", "span": 3, "parent_span": 1, "sample_id": "frame_047", "input_path": "/data/47.png"}
FINISH = {
    "start_ts_ns": 1_700_000_000_000_000_000,
    "duration_ms": 12.5,
    "output_paths": ["/tmp/out.png"],
    "rss_start_mb": 100.0,
    "rss_peak_mb": 150.0,
    "rss_end_mb": 120.0,
    "gpu_peak_mb": 1280.0,
    "gpu_source": "torch",
    "gpu_devices": {"0": 1024.0, "1": 256.0},
}
TS = 1_700_000_000_100_000_000


def _examples() -> dict[str, dict[str, Any]]:
    """One event of every type, each made by its builder."""
    artifact = f"runs/{RUN}/stages/detection/overlay.png"
    return {
        "run_started": protocol.run_started(
            CLIENT,
            RUN,
            TS,
            pipeline="perception",
            config={"a": 1},
            host="h",
            pid=7,
            dataset=None,
            argv=["x"],
            environment={"python": "3.11.7", "packages": {"numpy": "2.4.6"}, "gpus": []},
        ),
        "stage_started": protocol.stage_started(CLIENT, RUN, TS, **STAGE),
        "stage_finished": protocol.stage_finished(CLIENT, RUN, TS, **STAGE, **FINISH),
        "stage_failed": protocol.stage_finished(CLIENT, RUN, TS, **STAGE, **FINISH, error=("E", "m", "tb")),
        "artifact_saved": protocol.artifact_saved(
            CLIENT,
            RUN,
            TS,
            stage="detection",
            span=3,
            path=artifact,
            kind="png",
            size_bytes=10,
            sample_id=None,
            warnings=["w"],
        ),
        "sample_result": protocol.sample_result(
            CLIENT, RUN, TS, stage="detection", sample_id="frame_047", path=None, prediction={"boxes": []}
        ),
        "log": protocol.log(CLIENT, RUN, TS, level="INFO", message="hello", extra={"k": 1}),
        "heartbeat": protocol.heartbeat(CLIENT, RUN, TS, rss_mb=12.0),
        "run_finished": protocol.run_finished(
            CLIENT,
            RUN,
            TS,
            status="ok",
            duration_ms=1.0,
            stages_failed=0,
            dropped_events=0,
            error_type=None,
            error_message=None,
        ),
        "client_lost": protocol.client_lost(5, RUN, TS, lost_client_id=CLIENT, last_seen_ns=TS),
        "events_lost": protocol.events_lost(CLIENT, RUN, TS, events=3, reason="the disk is full"),
        "received": protocol.received(6, TS, spooled=True),
        "run_expired": protocol.run_expired(protocol.DAEMON_CLIENT_ID, 6, RUN, TS, ended_ns=TS),
    }


def test_a_stage_end_is_its_start_and_then_the_end_s_fields_gpu_fields_only_with_a_reading() -> None:
    started = protocol.stage_started(CLIENT, RUN, TS, **STAGE)
    without_gpu = {**FINISH, "gpu_peak_mb": None, "gpu_source": None, "gpu_devices": None}
    for error in (None, ("E", "m", "tb")):
        finished = protocol.stage_finished(CLIENT, RUN, TS, **STAGE, **without_gpu, error=error)
        assert list(finished)[: len(started)] == list(started)
        assert {k: v for k, v in finished.items() if k != "type"} | {"type": "stage_started"} == {
            **started,
            **{k: v for k, v in without_gpu.items() if not k.startswith("gpu_")},
            "gpu_peak_mb": None,
            **({} if error is None else {"error_type": "E", "error_message": "m", "traceback": "tb"}),
        }
        assert finished["type"] == ("stage_finished" if error is None else "stage_failed")
    with_gpu = protocol.stage_finished(CLIENT, RUN, TS, **STAGE, **{**FINISH, "gpu_devices": None})
    assert with_gpu["gpu_source"] == "torch" and with_gpu["gpu_devices"] == {}


def test_a_stage_end_without_a_gpu_reading_is_accepted_with_its_gpu_fields_null() -> None:
    """The builder leaves the GPU fields out without a reading; the decoder's defaults fill them."""
    no_gpu = {**FINISH, "gpu_peak_mb": None, "gpu_source": None, "gpu_devices": None}
    typed = validate_event({"seq": 1, **protocol.stage_finished(CLIENT, RUN, TS, **STAGE, **no_gpu)})
    assert (typed.gpu_peak_mb, typed.gpu_source, typed.gpu_devices) == (None, None, None)


def test_the_columns_the_fold_reads_from_a_stage_s_end_are_on_the_wire_in_types_they_store() -> None:
    """stage_executions' STAGE and MEMORY columns are read by name from the decoded end
    (daemon/projection/_rows.py): the builder makes each, the decoder keeps each, and its value goes
    into the column's Arrow type unchanged."""
    import pyarrow as pa

    from stagewatch.daemon.projection._rows import DEFINITIONS, Source

    table = DEFINITIONS["stage_executions"]
    read = [*table.of(Source.STAGE), *table.of(Source.MEMORY)]
    for event_type in ("stage_finished", "stage_failed"):
        built = _examples()[event_type]
        typed = validate_event({"seq": 1, **built})
        assert set(read) <= set(built) and set(read) <= field_names(EVENT_MODELS[event_type])
        for name in read:
            (stored,) = pa.array([getattr(typed, name)], table.schema.field(name).type).to_pylist()
            assert (dict(stored) if name == "gpu_devices" else stored) == built[name], name  # a map reads as pairs


def test_there_is_a_builder_for_every_event_type() -> None:
    assert sorted(_examples()) == sorted(protocol.EVENT_TYPES) == sorted(EVENT_MODELS)


@pytest.mark.parametrize("event_type", protocol.EVENT_TYPES)
def test_every_builder_makes_an_event_the_daemon_accepts_with_the_same_fields(event_type: str) -> None:
    event = _examples()[event_type]
    assert event["type"] == event_type and event["v"] == protocol.EVENT_VERSION
    typed = validate_event({"seq": 1, **event})
    assert type(typed) is EVENT_MODELS[event_type]
    assert set(event) | {"seq"} == field_names(EVENT_MODELS[event_type])
    assert as_dict(typed) == {"seq": 1, **event}  # nothing was dropped or coerced


def test_docs_list_exactly_the_builders_fields() -> None:
    text = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    envelope = text[text.index("## Envelope") : text.index("## Types")]
    types = text[text.index("## Types") : text.index("Names (`pipeline`")]
    assert re.findall(r"^\| `(\w+)` \|", envelope, re.M) == list(protocol.ENVELOPE_FIELDS)
    documented = {
        row[0]: re.findall(r"`(\w+)`", row[1]) for row in re.findall(r"^\| `(\w+)` \| ([^|]*) \|", types, re.M)
    }
    expected = {t: [f for f in e if f not in protocol.ENVELOPE_FIELDS] for t, e in _examples().items()}
    assert documented == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stage", "detection\n"),
        ("client_id", "c0ffee\n"),
        ("run_id", RUN + "\n"),
        ("run_id", RUN.upper()),
        ("seq", True),
        ("span", 3.0),
        ("input_path", "/data/4\x007.png"),
        ("output_paths", ["/tmp/a.png", "/tmp/b\x00.png"]),
        ("gpu_source", "torch+"),
    ],
)
def test_the_daemon_refuses_what_the_client_never_makes(field: str, value: object) -> None:
    """A name with a trailing newline (a regex `$` lets it through), a NUL in a path, a bool
    or a float where an integer belongs: refused with the field's name, never stored; also
    after the valid value of the field was accepted (and remembered)."""
    validate_event({"seq": 1, **_examples()["stage_finished"]})
    event = {"seq": 1, **_examples()["stage_finished"], field: value}
    for _ in range(2):
        with pytest.raises(ValueError, match=field):
            validate_event(event)


def test_remembered_names_stay_bounded_and_still_checked() -> None:
    """Names that passed are remembered so their regex runs once; past the bound the memory
    starts over, and every name is still checked."""
    from stagewatch.daemon.projection._schema import MAX_KNOWN_STRINGS, StageFinished

    rule = dict(StageFinished.checked_fields)["stage"]
    for number in range(MAX_KNOWN_STRINGS + 10):
        validate_event({"seq": 1, **_examples()["stage_finished"], "stage": f"s{number}"})
    assert 0 < len(rule.known) <= MAX_KNOWN_STRINGS
    with pytest.raises(ValueError, match="stage"):
        validate_event({"seq": 1, **_examples()["stage_finished"], "stage": "../escape"})


def test_msgpack_extension_types_are_refused() -> None:
    import msgpack

    from stagewatch.daemon.ingest._decode import Rejected, decode_event

    event = {"seq": 1, **_examples()["log"], "extra": {"k": msgpack.ExtType(5, b"x")}}
    rejected = decode_event(msgpack.packb(event))
    assert isinstance(rejected, Rejected) and "extension" in rejected.reason and rejected.client_id == CLIENT


def test_packing_after_a_refused_value_is_unharmed_in_every_thread() -> None:
    """pack_event keeps one Packer a thread: a value it cannot pack leaves nothing behind."""
    event = protocol.heartbeat(CLIENT, RUN, TS, rss_mb=1.0)
    results: list[bytes] = []

    def pack_twice() -> None:
        with pytest.raises((TypeError, OverflowError)):
            protocol.pack_event({**event, "bad": 2**70})
        results.append(protocol.pack_event(event))

    threads = [threading.Thread(target=pack_twice) for _ in range(3)]
    for thread in threads:
        thread.start()
    pack_twice()
    for thread in threads:
        thread.join()
    assert results == [msgpack.packb(event, use_bin_type=True)] * 4
