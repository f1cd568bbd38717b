"""The event schema (version 1), validated with pydantic. docs/events.md describes it.

Every event shares the envelope (v, type, client_id, seq, ts_ns, run_id); each type adds
its fields. Strings are bounded, names that become paths are checked, and unknown
fields are ignored (a newer client may add some), so validation is strict about what the
daemon uses and tolerant of the rest.

Validation promises projectability: every bound comes from the protocol's limits
(stagewatch._protocol), so an event that passes can be folded and stored by every read
model: integers within int64, times before 2200 (a stage's end stays within int64
nanoseconds), durations and memory within physical bounds, JSON values at most 32 deep.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from stagewatch._home import artifact_prefix
from stagewatch._names import CLIENT_ID_PATTERN, NAME_PATTERN, RUN_ID_PATTERN, check_name
from stagewatch._protocol import (
    MAX_DURATION_MS,
    MAX_INT,
    MAX_LONG_TEXT_CHARS,
    MAX_MEGABYTES,
    MAX_TEXT_CHARS,
    MAX_TS_NS,
    json_problem,
)


def _storable(value: Any) -> Any:
    problem = json_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
LongText = Annotated[str, Field(max_length=MAX_LONG_TEXT_CHARS)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
Position = Annotated[int, Field(ge=1, le=MAX_INT)]  # a span or a sequence number
Nanoseconds = Annotated[int, Field(ge=0, lt=MAX_TS_NS)]
JsonValue = Annotated[Any, AfterValidator(_storable)]
JsonMap = Annotated[dict[str, Any], AfterValidator(_storable)]
# Patterns, not Python validators: pydantic checks them in Rust, which keeps validation
# at about 2 us an event. stagewatch._names owns them.
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
RunId = Annotated[str, Field(pattern=RUN_ID_PATTERN)]
Milliseconds = Annotated[float, Field(ge=0, le=MAX_DURATION_MS, allow_inf_nan=False)]
Megabytes = Annotated[float, Field(ge=0, le=MAX_MEGABYTES, allow_inf_nan=False)] | None
MAX_GPU_DEVICES = 64
DeviceIndex = Annotated[str, Field(pattern=r"^(?:[0-9]|[1-5][0-9]|6[0-3])$")]  # "0" .. "63"
# One source, or allocators added up: "torch", "torch+cupy", "nvml" (client/_gpu.py).
GpuSource = Annotated[str, Field(pattern=r"^(?:nvml|(?:torch|cupy|jax)(?:\+(?:torch|cupy|jax)){0,2})$")]


PathText = Annotated[str, Field(max_length=MAX_TEXT_CHARS, pattern=r"^[^\x00]*$")]


def check_artifact_path(run_id: str, stage: str, path: str) -> None:
    """A saved output's path must be runs/{run_id}/stages/{stage}/{a plain file name}."""
    expected = artifact_prefix(run_id, stage)
    if not path.startswith(expected):
        raise ValueError(f"artifact path must start with {expected!r}")
    check_name(path[len(expected) :], "artifact file name")


class Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1]
    client_id: Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]
    seq: Position
    ts_ns: Nanoseconds
    run_id: RunId


class RunStarted(Envelope):
    type: Literal["run_started"]
    pipeline: Name
    config: JsonMap = {}
    host: Text = ""
    pid: Count = 0
    dataset: PathText | None = None
    argv: Annotated[list[Text], Field(max_length=1024)] = []


class StageStarted(Envelope):
    type: Literal["stage_started"]
    stage: Name
    span: Position
    parent_span: Position | None = None
    sample_id: Text | None = None
    input_path: PathText | None = None


class StageFinished(StageStarted):
    type: Literal["stage_finished"]  # type: ignore[assignment]
    start_ts_ns: Nanoseconds
    duration_ms: Milliseconds
    output_paths: Annotated[list[PathText], Field(max_length=10_000)] = []
    rss_start_mb: Megabytes = None
    rss_peak_mb: Megabytes = None
    rss_end_mb: Megabytes = None
    gpu_peak_mb: Megabytes = None
    gpu_source: GpuSource | None = None
    gpu_devices: Annotated[dict[DeviceIndex, Megabytes], Field(max_length=MAX_GPU_DEVICES)] | None = None


class StageFailed(StageFinished):
    type: Literal["stage_failed"]  # type: ignore[assignment]
    error_type: Text
    error_message: LongText = ""
    traceback: LongText = ""


class ArtifactSaved(Envelope):
    type: Literal["artifact_saved"]
    stage: Name
    span: Position
    path: PathText
    kind: Annotated[str, Field(max_length=16)]
    bytes: Count
    sample_id: Text | None = None
    warnings: Annotated[list[Text], Field(max_length=64)] = []

    def model_post_init(self, context: Any) -> None:
        check_artifact_path(self.run_id, self.stage, self.path)


class SampleResult(Envelope):
    type: Literal["sample_result"]
    stage: Name
    sample_id: Name
    prediction: JsonValue = None
    path: PathText | None = None  # a saved artifact of this run and stage

    def model_post_init(self, context: Any) -> None:
        if self.path is not None:
            check_artifact_path(self.run_id, self.stage, self.path)


class Log(Envelope):
    type: Literal["log"]
    level: Annotated[str, Field(max_length=16)]
    message: LongText
    stage: Name | None = None
    sample_id: Text | None = None
    logger: Annotated[str, Field(max_length=256)] | None = None
    extra: JsonMap = {}


class Heartbeat(Envelope):
    type: Literal["heartbeat"]
    rss_mb: Megabytes = None


class RunFinished(Envelope):
    type: Literal["run_finished"]
    status: Literal["ok", "failed"]
    duration_ms: Milliseconds
    stages_failed: Count = 0
    dropped_events: Count = 0
    error_type: Text | None = None
    error_message: LongText | None = None


class ClientLost(Envelope):
    """Written by the daemon when a client with open work stops sending."""

    type: Literal["client_lost"]
    lost_client_id: Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]
    last_seen_ns: Nanoseconds


EVENT_MODELS: dict[str, type[Envelope]] = {
    "run_started": RunStarted,
    "stage_started": StageStarted,
    "stage_finished": StageFinished,
    "stage_failed": StageFailed,
    "artifact_saved": ArtifactSaved,
    "sample_result": SampleResult,
    "log": Log,
    "heartbeat": Heartbeat,
    "run_finished": RunFinished,
    "client_lost": ClientLost,
}
Event = Annotated[Union[tuple(EVENT_MODELS.values())], Field(discriminator="type")]  # noqa: UP007
EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)


def validate_event(event: object) -> Any:
    """The typed event, or pydantic.ValidationError saying what is wrong."""
    return EVENT_ADAPTER.validate_python(event)
