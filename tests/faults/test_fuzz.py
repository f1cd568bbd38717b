"""Bad input: the decoder, the validator and the projection never raise on anything."""

from __future__ import annotations

import json
import time
import uuid

import msgpack
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagewatch._protocol import pack_batch
from stagewatch.daemon.ingest._decode import Batch, Rejected, decode_batch, decode_event
from stagewatch.daemon.projection._projection import Projector
from tests.conftest import DaemonProcess, wait_for

RUN_ID = str(uuid.UUID(int=42))
VALID = {
    "v": 1,
    "type": "stage_finished",
    "client_id": "fuzz",
    "seq": 1,
    "ts_ns": 1_790_000_000_000_000_000,
    "run_id": RUN_ID,
    "stage": "detection",
    "span": 1,
    "start_ts_ns": 1_790_000_000_000_000_000,
    "duration_ms": 1.0,
}
HOSTILE_TEXT = st.sampled_from(["../../etc/passwd", "/abs", "a\x00b", "..", "", "x" * 5000, "é/ü", "\ud800"])
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary() | HOSTILE_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert isinstance(decode_batch(data), Batch | Rejected)
    assert isinstance(decode_event(data), Rejected) or decode_event(data).type


def _packable(value: object) -> bytes | None:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except Exception:  # lone surrogates and the like cannot be packed: nothing to test
        return None


FIELDS = [*sorted(VALID), "output_paths", "error_type", "sample_id", "input_path", "parent_span", "rss_peak_mb"]
TYPES = [
    "run_started",
    "stage_started",
    "stage_failed",
    "artifact_saved",
    "log",
    "run_finished",
    "sample_result",
    "heartbeat",
    "client_lost",
    "run_expired",
    "nope",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), values, max_size=6))
def test_mutated_events_are_rejected_or_projected_without_error(changes: dict) -> None:
    payload = _packable({**VALID, **changes})
    if payload is None:
        return
    event = decode_event(payload)
    if isinstance(event, Rejected):
        assert event.reason
        return
    Projector().apply(event, 0)  # anything that validates must project


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(TYPES), st.dictionaries(st.text(max_size=12), values, max_size=8))
def test_every_event_type_with_random_fields(event_type: str, fields: dict) -> None:
    payload = _packable({**VALID, **fields, "type": event_type})
    if payload is None:
        return
    event = decode_event(payload)
    if not isinstance(event, Rejected):
        Projector().apply(event, 0)


def test_deep_nesting_and_invalid_utf8_are_rejected() -> None:
    deep = b"\x91" * 100_000 + b"\xc0"  # 100k nested one-element arrays
    assert isinstance(decode_event(deep), Rejected)
    assert isinstance(decode_batch(deep), Rejected)
    bad_utf8 = msgpack.packb({"v": 1, "type": b"stage_started"}, use_bin_type=False).replace(b"stage", b"\xff\xfe")
    assert isinstance(decode_event(bad_utf8), Rejected)


def test_the_real_daemon_survives_a_fuzz_storm_and_writes_nothing_outside_its_home(home) -> None:
    daemon = DaemonProcess(home / "inner").start()  # everything outside "inner" must stay empty
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(f"ipc://{daemon.socket_path}")
    frames = [
        b"",
        b"\x00" * 64,
        msgpack.packb([1, "x" * 300, 1, []]),
        msgpack.packb([1, "c", "no", []]),
        pack_batch("c", 1, [b"\x91" * 50_000 + b"\xc0"]),
        b"\xdd\xff\xff\xff\xff",  # a 4-billion-item array
        pack_batch("c", 2, [msgpack.packb({**VALID, "stage": "../../../tmp/owned", "seq": 2})]),
        pack_batch("c", 3, [msgpack.packb({**VALID, "run_id": "../../x", "seq": 3})]),
    ]
    for frame in frames:
        sock.send(frame)
    sock.send_multipart([b"two", b"frames"])
    sock.close()
    context.term()
    wait_for(lambda: daemon.status().get("stats", {}).get("invalid", 0) >= len(frames))
    time.sleep(0.5)
    assert daemon.process.poll() is None
    assert daemon.stop() == 0
    assert sorted(p.name for p in home.iterdir()) == ["inner", "inner-daemon.log"]
    assert not list(home.glob("**/owned")) and not list(home.glob("**/x"))


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=300)
    | st.builds(
        lambda k, v: f"[daemon]\n{k} = {v}\n",
        st.sampled_from(["client_timeout_s", "log_level", "group_access", "flush_interval_s", "nope"]),
        st.text(max_size=20),
    )
)
def test_malformed_config_files_get_a_config_error_and_nothing_else(tmp_path_factory, text: str) -> None:
    from stagewatch.daemon.base._settings import ConfigError, load_config

    path = tmp_path_factory.mktemp("config") / "stagewatch.toml"
    path.write_text(text, errors="surrogateescape") if "\ud800" not in text else path.write_bytes(b"\xff")
    try:
        load_config(path, environ={})
    except ConfigError as error:
        assert str(error)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
coco_keys = [
    "images",
    "annotations",
    "categories",
    "id",
    "image_id",
    "category_id",
    "bbox",
    "area",
    "iscrowd",
    "score",
    "segmentation",
    "width",
    "height",
    "counts",
    "size",
]
coco_like = st.recursive(
    st.none() | st.integers(-3, 5) | st.floats() | st.text(max_size=4),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(coco_keys), children, max_size=6),
    max_leaves=40,
)


small_id = st.integers(0, 20).flatmap(lambda n: st.integers(0, 3) if n else coco_like)  # mostly valid
number = st.integers(0, 10).flatmap(lambda n: st.floats(0, 60) if n else st.floats() | st.integers(-5, 60))
box = st.integers(0, 5).flatmap(
    lambda n: st.lists(number, min_size=4, max_size=4) if n else st.lists(number, max_size=6) | coco_like
)
segmentation = (
    st.lists(st.lists(number, min_size=4, max_size=8), max_size=2)
    | st.fixed_dictionaries(
        {
            "size": st.lists(st.integers(-1, 40), max_size=3),
            "counts": st.lists(st.integers(-2, 50), max_size=6) | st.text(),
        }
    )
    | coco_like
)
near_valid_gt = st.fixed_dictionaries(
    {
        "images": st.lists(
            st.fixed_dictionaries(
                {"id": small_id, "width": st.integers(1, 40) | coco_like, "height": st.integers(1, 40) | coco_like}
            ),
            max_size=4,
        ),
        "categories": st.lists(st.fixed_dictionaries({"id": small_id}), max_size=3),
        "annotations": st.lists(
            st.fixed_dictionaries(
                {
                    "id": small_id,
                    "image_id": small_id,
                    "category_id": small_id,
                    "bbox": box,
                    "area": number,
                    "iscrowd": st.integers(0, 1) | coco_like,
                    "segmentation": segmentation,
                }
            ),
            max_size=6,
        ),
    }
)
near_valid_dt = st.lists(
    st.fixed_dictionaries(
        {"image_id": small_id, "category_id": small_id, "bbox": box, "score": number, "segmentation": segmentation}
    ),
    max_size=6,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(near_valid_gt | coco_like, near_valid_dt | coco_like, st.sampled_from(["bbox", "segm"]))
def test_malformed_coco_documents_get_a_named_error_and_nothing_else(ground_truth, detections, iou_type) -> None:
    from stagewatch.daemon.groundtruth.coco import CocoFormatError, evaluate_coco, parse_coco_detections
    from stagewatch.daemon.groundtruth.coco import parse_coco_ground_truth as parse

    try:
        parsed = parse(ground_truth, "gt.json", iou_type)
        evaluate_coco(parsed, parse_coco_detections(detections, parsed, "dt.json", iou_type), iou_type)
    except CocoFormatError as error:
        assert "gt.json" in str(error) or "dt.json" in str(error)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.binary(max_size=200)
    | st.text(max_size=200).map(str.encode)
    | st.builds(lambda v: json.dumps({"name": "x", "stages": v}).encode(), json_values)
    | st.builds(lambda v: json.dumps({"name": "x", "stages": {"det": v}}).encode(), json_values),
    st.sampled_from(["golden.yaml", "golden.json"]),
)
def test_malformed_dataset_files_get_a_dataset_error_and_nothing_else(tmp_path_factory, data, name) -> None:
    from stagewatch.daemon.groundtruth.spec import DatasetError, load_dataset, validate_dataset

    path = tmp_path_factory.mktemp("dataset") / name
    path.write_bytes(data)
    try:
        validate_dataset(load_dataset(path))  # a file that loads must also validate without raising
    except DatasetError as error:
        assert str(path) in str(error)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(json_values | st.fixed_dictionaries({"boxes": json_values, "scores": json_values, "labels": json_values}))
def test_any_prediction_is_judged_never_raises(tmp_path_factory, prediction) -> None:
    from stagewatch.daemon.groundtruth.samples import StageAccuracy
    from stagewatch.daemon.groundtruth.spec import load_dataset
    from tests.groundtruth.builders import write_dataset

    global _judging_dataset
    if _judging_dataset is None:
        _judging_dataset = load_dataset(write_dataset(tmp_path_factory.mktemp("golden"), 2))
    for stage in ("detection", "segmentation", "lidar"):
        verdict = StageAccuracy(_judging_dataset, stage).judge("s0001", prediction, None)
        assert verdict.status in ("correct", "wrong", "invalid")


_judging_dataset = None
