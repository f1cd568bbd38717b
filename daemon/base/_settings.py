"""The configuration file (TOML), validated, with environment and flag overrides.

Precedence, lowest to highest: defaults < the file (--config or $STAGEWATCH_CONFIG) <
environment variables (STAGEWATCH_HOME, STAGEWATCH_ENDPOINT, STAGEWATCH_<SECTION>_<KEY>)
< command-line flags. `stagewatch config show` prints every value and where it came from;
docs/configuration.md documents every key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ByteSize, ConfigDict, Field, ValidationError

from stagewatch._files import NotARegularFile, regular_file


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DaemonSection(_Section):
    client_timeout_s: float = Field(
        15.0, gt=0, le=3600, description="silence after which a client's open stages are crashed"
    )
    flush_interval_s: float = Field(1.0, gt=0, le=60, description="how often rows and audit trails are written")
    merge_interval_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="how often the tables' small files are compacted (docs/storage.md, Compaction and vacuum)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="the daemon's own log level")
    group_access: bool = Field(False, description="let users in the home's group connect and write runs")
    late_event_grace_s: float = Field(
        120.0, ge=0, le=86400, description="a finished run stays in memory this long for late events (worker spools)"
    )
    accuracy_worker: bool = Field(
        True, description="judge sample results against golden datasets in a worker process (docs/ground-truth.md)"
    )
    dataset_roots: str = Field(
        "",
        max_length=4096,
        description="folders (':'-separated) golden datasets must be in; empty: anywhere, or only the home's "
        "datasets folder with group_access",
    )


class DiskSection(_Section):
    warn_free_percent: float = Field(10.0, ge=0, le=100, description="warn below this much free space (percent)")
    warn_free_bytes: ByteSize = Field(ByteSize(5 * 1024**3), description="warn below this much free space")
    max_home_bytes: ByteSize | None = Field(None, description="warn when the home grows past this size")
    floor_free_bytes: ByteSize = Field(ByteSize(64 * 1024**2), description="below this, stop accepting events")
    check_interval_s: float = Field(10.0, gt=0, le=3600, description="how often free space is checked")


def _duration(value: object) -> object:
    from stagewatch.daemon.tables._retention import parse_duration

    parse_duration(value)  # raises ValueError with what was expected
    return value


Duration = Annotated[str, AfterValidator(_duration)]


class RetentionSection(_Section):
    runs: Duration = Field("90d", description="finished runs: folder, audit trail, outputs and their table rows")
    events: Duration = Field("30d", description="event-log segments (only once every read model has passed them)")
    daemon_logs: Duration = Field("30d", description="the daemon's own rotated log files")
    check_interval_s: float = Field(3600.0, gt=0, description="how often the daemon applies retention")


class Config(_Section):
    home: str = Field("./output", description="the stagewatch home")
    endpoint: str | None = Field(None, description="ingest endpoint; default: the ipc socket in the home")
    daemon: DaemonSection = DaemonSection()
    disk: DiskSection = DiskSection()
    retention: RetentionSection = RetentionSection()


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and the source."""


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    flags: Mapping[str, Any] | None = None,
) -> tuple[Config, dict[str, str]]:
    """The effective configuration and, per dotted key, where its value came from."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    file_path = path or environ.get("STAGEWATCH_CONFIG")
    if file_path:
        _merge(values, sources, _read_file(Path(file_path)), f"file {file_path}")
    _merge(values, sources, _from_environment(environ), "environment")
    _merge(values, sources, _unflatten({k: v for k, v in (flags or {}).items() if v is not None}), "flag")
    try:
        config = Config.model_validate(values)
    except ValidationError as error:
        raise ConfigError(_describe(error, sources)) from None
    for key in _leaf_keys(config.model_dump()):
        sources.setdefault(key, "default")
    return config, sources


MAX_CONFIG_FILE_BYTES = 1024**2


def _read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(regular_file(path, MAX_CONFIG_FILE_BYTES).read_text())
    except NotARegularFile as error:
        raise ConfigError(f"config file {error}") from None
    except OSError as error:
        raise ConfigError(f"config file {str(path)[:300]}: cannot read ({error.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key in ("home", "endpoint"):
        if environ.get(f"STAGEWATCH_{key.upper()}"):
            found[key] = environ[f"STAGEWATCH_{key.upper()}"]
    for section, model in (("daemon", DaemonSection), ("disk", DiskSection), ("retention", RetentionSection)):
        for field in model.model_fields:
            name = f"STAGEWATCH_{section.upper()}_{field.upper()}"
            if name in environ:
                found.setdefault(section, {})[field] = environ[name]
    return found


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *sections, key = dotted.split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = value
    return nested


def _merge(
    values: dict[str, Any], sources: dict[str, str], new: Mapping[str, Any], source: str, prefix: str = ""
) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping):
            _merge(values.setdefault(key, {}), sources, value, source, f"{prefix}{key}.")
        else:
            values[key] = value
            sources[f"{prefix}{key}"] = source


def _leaf_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys += _leaf_keys(value, f"{prefix}{key}.") if isinstance(value, Mapping) else [f"{prefix}{key}"]
    return keys


def _describe(error: ValidationError, sources: Mapping[str, str]) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        source = sources.get(key, "default")
        problems.append(f"{key} (from {source}): {item['msg']}, got {item.get('input')!r}")
    return "invalid configuration: " + "; ".join(problems)


def describe_keys() -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every key: the source of docs/configuration.md."""
    rows = []
    sections = (("", Config), ("daemon.", DaemonSection), ("disk.", DiskSection), ("retention.", RetentionSection))
    for section, model in sections:
        for name, field in model.model_fields.items():
            if name in ("daemon", "disk", "retention"):
                continue
            rows.append((f"{section}{name}", repr(field.default), field.description or ""))
    return rows
