"""The event schema (version 1), validated with msgspec. docs/events.md describes it.

Every event shares the envelope (v, type, client_id, seq, ts_ns, run_id); each type adds
its fields. Strings are bounded, names that become paths are checked, and unknown
fields are ignored (a newer client may add some), so validation is strict about what the
daemon uses and tolerant of the rest.

Validation promises projectability: every bound comes from the protocol's limits
(stagewatch._protocol), so an event that passes can be folded and stored by every read
model: integers within int64, times before 2200 (a stage's end stays within int64
nanoseconds), durations and memory within physical bounds, JSON values at most 32 deep.

msgspec decodes and validates a packed event into these typed structs in one native pass
(about 3 us an event, where msgpack + pydantic took 7-12: benchmarks/ingest_phases.py).
It is strict about types: an integer field takes no float and no bool, a float field takes
an integer. msgspec matches a `pattern` with Python's `re.search` on every value (half of the
decoding time), so the names that repeat in nearly every event (client id, run id, stage)
carry a `Checked` rule instead: matched once per distinct value, then a set lookup.
"""

import re
import typing
from typing import Annotated, Any, ClassVar, Literal, Union

import msgspec
from msgspec import Meta, Struct

from stagewatch._home import artifact_prefix
from stagewatch._names import CLIENT_ID_PATTERN, NAME_PATTERN, RUN_ID_PATTERN, check_name
from stagewatch._protocol import (
    MAX_ARTIFACT_WARNINGS,
    MAX_DURATION_MS,
    MAX_INT,
    MAX_LONG_TEXT_CHARS,
    MAX_MEGABYTES,
    MAX_TEXT_CHARS,
    MAX_TS_NS,
    json_problem,
)


class InvalidEvent(ValueError):
    """What is wrong with an event, in msgspec's words ("Expected `int` >= 1 - at `$.seq`")."""


MAX_KNOWN_STRINGS = 16_384  # per rule (a few MB at most): valid values remembered, forgotten when full


class Checked:
    """A string rule, as `Annotated` metadata that msgspec passes over: `Envelope.__post_init__`
    checks each such field. A name that passed once is remembered, so its regex runs once per
    distinct value (about 0.4 us) and a set lookup (30 ns) serves every later event. Without a
    pattern the rule is only "no NUL" (paths: distinct, so not remembered)."""

    def __init__(self, pattern: str | None, rule: str) -> None:
        self._fullmatch = re.compile(pattern).fullmatch if pattern else None
        self._rule = rule
        self.known: set[str] = set()  # looked up by the caller first: a call less per field

    def check(self, value: str, field: str) -> None:
        if self._fullmatch is None:
            if "\x00" not in value:
                return
        elif self._fullmatch(value) is not None:
            if len(self.known) >= MAX_KNOWN_STRINGS:
                self.known.clear()
            self.known.add(value)
            return
        raise ValueError(f"Expected `str` {self._rule} - at `$.{field}`")


Text = Annotated[str, Meta(max_length=MAX_TEXT_CHARS)]
LongText = Annotated[str, Meta(max_length=MAX_LONG_TEXT_CHARS)]
Count = Annotated[int, Meta(ge=0, le=MAX_INT)]
Position = Annotated[int, Meta(ge=1, le=MAX_INT)]  # a span or a sequence number
Nanoseconds = Annotated[int, Meta(ge=0, lt=MAX_TS_NS)]
Name = Annotated[str, Checked(NAME_PATTERN, f"matching regex {NAME_PATTERN!r}")]
RunId = Annotated[str, Checked(RUN_ID_PATTERN, f"matching regex {RUN_ID_PATTERN!r}")]
ClientId = Annotated[str, Checked(CLIENT_ID_PATTERN, f"matching regex {CLIENT_ID_PATTERN!r}")]
Milliseconds = Annotated[float, Meta(ge=0, le=MAX_DURATION_MS)]  # NaN fails both bounds
Megabytes = Annotated[float, Meta(ge=0, le=MAX_MEGABYTES)] | None
MAX_GPU_DEVICES = 64
DeviceIndex = Annotated[str, Meta(pattern=r"^(?:[0-9]|[1-5][0-9]|6[0-3])\Z")]  # "0" .. "63"
# One source, or allocators added up: "torch", "torch+cupy", "nvml" (client/_gpu.py).
GPU_SOURCE_PATTERN = r"(?:nvml|(?:torch|cupy|jax)(?:\+(?:torch|cupy|jax)){0,2})"
GpuSource = Annotated[str, Checked(GPU_SOURCE_PATTERN, f"matching regex {GPU_SOURCE_PATTERN!r}")]
PathText = Annotated[str, Meta(max_length=MAX_TEXT_CHARS), Checked(None, "without NUL characters")]


def check_artifact_path(run_id: str, stage: str, path: str) -> None:
    """A saved output's path must be runs/{run_id}/stages/{stage}/{a plain file name}."""
    expected = artifact_prefix(run_id, stage)
    if not path.startswith(expected):
        raise ValueError(f"artifact path must start with {expected!r}")
    check_name(path[len(expected) :], "artifact file name")


def _check_storable(value: Any, field: str) -> None:
    problem = json_problem(value)
    if problem is not None:
        raise ValueError(f"{field}: {problem}")


class Envelope(Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    # gc=False: an event holds no reference cycles, so the collector need not track it.
    type: ClassVar[str]
    checked_fields: ClassVar[tuple[tuple[str, Checked], ...]] = ()  # set below, from the annotations
    v: Literal[1]
    client_id: ClientId
    seq: Position
    ts_ns: Nanoseconds
    run_id: RunId

    def __post_init__(self) -> None:
        for name, rule in self.checked_fields:
            value = getattr(self, name)
            if value.__class__ is str:
                if value not in rule.known:
                    rule.check(value, name)
            elif value is not None:  # a list of them
                for item in value:
                    rule.check(item, name)


class RunStarted(Envelope, tag="run_started", kw_only=True):
    type: ClassVar[str] = "run_started"
    pipeline: Name
    config: dict[str, Any] = {}
    host: Text = ""
    pid: Count = 0
    dataset: PathText | None = None
    argv: Annotated[list[Text], Meta(max_length=1024)] = []
    # Added later (older clients send none): Python, platform, package versions, GPU models.
    environment: dict[str, Any] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_storable(self.config, "config")
        _check_storable(self.environment, "environment")


class StageStarted(Envelope, tag="stage_started", kw_only=True):
    type: ClassVar[str] = "stage_started"
    stage: Name
    span: Position
    parent_span: Position | None = None
    sample_id: Text | None = None
    input_path: PathText | None = None


class StageFinished(StageStarted, tag="stage_finished", kw_only=True):
    type: ClassVar[str] = "stage_finished"
    start_ts_ns: Nanoseconds
    duration_ms: Milliseconds
    output_paths: Annotated[list[PathText], Meta(max_length=10_000)] = []
    rss_start_mb: Megabytes = None
    rss_peak_mb: Megabytes = None
    rss_end_mb: Megabytes = None
    gpu_peak_mb: Megabytes = None
    gpu_source: GpuSource | None = None
    gpu_devices: Annotated[dict[DeviceIndex, Megabytes], Meta(max_length=MAX_GPU_DEVICES)] | None = None


class StageFailed(StageFinished, tag="stage_failed", kw_only=True):
    type: ClassVar[str] = "stage_failed"
    error_type: Text
    error_message: LongText = ""
    traceback: LongText = ""


class ArtifactSaved(Envelope, tag="artifact_saved", kw_only=True):
    type: ClassVar[str] = "artifact_saved"
    stage: Name
    span: Position
    path: PathText
    kind: Annotated[str, Meta(max_length=16)]
    bytes: Count
    sample_id: Text | None = None
    warnings: Annotated[list[Text], Meta(max_length=MAX_ARTIFACT_WARNINGS)] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        check_artifact_path(self.run_id, self.stage, self.path)


class SampleResult(Envelope, tag="sample_result", kw_only=True):
    type: ClassVar[str] = "sample_result"
    stage: Name
    sample_id: Name
    prediction: Any = None
    path: PathText | None = None  # a saved artifact of this run and stage

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_storable(self.prediction, "prediction")
        if self.path is not None:
            check_artifact_path(self.run_id, self.stage, self.path)


class Log(Envelope, tag="log", kw_only=True):
    type: ClassVar[str] = "log"
    level: Annotated[str, Meta(max_length=16)]
    message: LongText
    stage: Name | None = None
    sample_id: Text | None = None
    logger: Annotated[str, Meta(max_length=256)] | None = None
    extra: dict[str, Any] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_storable(self.extra, "extra")


class Heartbeat(Envelope, tag="heartbeat", kw_only=True):
    type: ClassVar[str] = "heartbeat"
    rss_mb: Megabytes = None


class RunFinished(Envelope, tag="run_finished", kw_only=True):
    type: ClassVar[str] = "run_finished"
    status: Literal["ok", "failed"]
    duration_ms: Milliseconds
    stages_failed: Count = 0
    dropped_events: Count = 0
    error_type: Text | None = None
    error_message: LongText | None = None


class EventsLost(Envelope, tag="events_lost", kw_only=True):
    """Written by a client that stopped with events it could neither deliver nor spool."""

    type: ClassVar[str] = "events_lost"
    events: Count
    reason: Text


class ClientLost(Envelope, tag="client_lost", kw_only=True):
    """Written by the daemon when a client with open work stops sending."""

    type: ClassVar[str] = "client_lost"
    lost_client_id: ClientId
    last_seen_ns: Nanoseconds


class Received(Envelope, tag="received", kw_only=True):
    """Written by the daemon into the log before the events it receives (at most about once a
    second): its own clock then, for those events and the ones after them up to the next marker."""

    type: ClassVar[str] = "received"
    spooled: bool = False


class RunExpired(Envelope, tag="run_expired", kw_only=True):
    """Retention removed this finished run (written by the daemon or by `stagewatch gc`)."""

    type: ClassVar[str] = "run_expired"
    ended_ns: Nanoseconds


EVENT_MODELS: dict[str, type[Envelope]] = {
    model.type: model
    for model in (
        RunStarted,
        StageStarted,
        StageFinished,
        StageFailed,
        ArtifactSaved,
        SampleResult,
        Log,
        Heartbeat,
        RunFinished,
        ClientLost,
        EventsLost,
        Received,
        RunExpired,
    )
}
Event = Union[tuple(EVENT_MODELS.values())]  # noqa: UP007  (tagged by "type")


def _checked_fields(model: type[Envelope]) -> tuple[tuple[str, Checked], ...]:
    """The fields whose annotation carries a `Checked` rule (also inside `| None` and `list[]`)."""
    found = []
    for name, hint in typing.get_type_hints(model, include_extras=True).items():
        for part in [hint, *typing.get_args(hint), *(a for arg in typing.get_args(hint) for a in typing.get_args(arg))]:
            rule = next((m for m in getattr(part, "__metadata__", ()) if isinstance(m, Checked)), None)
            if rule is not None:
                found.append((name, rule))
                break
    return tuple(found)


for _model in EVENT_MODELS.values():
    _model.checked_fields = _checked_fields(_model)


def _no_extensions(code: int, data: memoryview) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the protocol")


_DECODER = msgspec.msgpack.Decoder(Event, ext_hook=_no_extensions)


def decode_packed(payload: bytes) -> Envelope:
    """The typed event in one packed payload; InvalidEvent saying what is wrong."""
    try:
        return _DECODER.decode(payload)
    except (msgspec.DecodeError, RecursionError, ValueError) as error:  # ValueError: _no_extensions
        raise InvalidEvent(str(error)) from None


def validate_event(event: object) -> Envelope:
    """The typed event from a decoded map; InvalidEvent saying what is wrong."""
    try:
        return msgspec.convert(event, Event)
    except (msgspec.ValidationError, RecursionError) as error:
        raise InvalidEvent(str(error)) from None


def field_names(model: type[Envelope]) -> set[str]:
    """The wire fields of an event type (its tag, "type", included)."""
    return {"type", *model.__struct_fields__}


def as_dict(event: Envelope) -> dict[str, Any]:
    """The event as the map it came from, "type" included, defaults filled in."""
    return {"type": event.type, **msgspec.structs.asdict(event)}
