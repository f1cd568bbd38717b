"""stagewatch.daemon: the daemon, its read models, and the query API over them.

from stagewatch.daemon import Filters, parse_time, query_stages, query_stats
table = query_stages(Path("output"), Filters(stage="detection", since=parse_time("7d")))
stats = query_stats(Path("output"), Filters(since=parse_time("30d")))   # per stage, as `stagewatch stats`
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each name is imported when first used: a command that reads the tables (`stagewatch show`)
# does not pay for the daemon's sockets, settings and maintenance, nor the reverse.
_MODULES = {
    "Daemon": "stagewatch.daemon._daemon",
    "DaemonSettings": "stagewatch.daemon._daemon",
    "serve": "stagewatch.daemon._daemon",
    "DaemonAlreadyRunning": "stagewatch.daemon.base._lock",
    "configure_logging": "stagewatch.daemon.base._logging",
    **dict.fromkeys(
        (
            "LEVELS",
            "STATS_COLUMNS",
            "Filters",
            "parse_time",
            "query_gpu_devices",
            "query_logs",
            "query_runs",
            "query_stages",
            "query_stats",
            "stage_stats",
        ),
        "stagewatch.daemon.query._query",
    ),
    **dict.fromkeys(
        ("RunNotFound", "list_runs", "load_audit", "resolve_run_id"), "stagewatch.daemon.query._readmodels"
    ),
}

__all__ = [
    "LEVELS",
    "STATS_COLUMNS",
    "Daemon",
    "DaemonAlreadyRunning",
    "DaemonSettings",
    "Filters",
    "RunNotFound",
    "configure_logging",
    "list_runs",
    "load_audit",
    "parse_time",
    "query_gpu_devices",
    "query_logs",
    "query_runs",
    "query_stages",
    "query_stats",
    "resolve_run_id",
    "serve",
    "stage_stats",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULES))


if TYPE_CHECKING:
    from stagewatch.daemon._daemon import Daemon, DaemonSettings, serve
    from stagewatch.daemon.base._lock import DaemonAlreadyRunning
    from stagewatch.daemon.base._logging import configure_logging
    from stagewatch.daemon.query._query import (
        LEVELS,
        STATS_COLUMNS,
        Filters,
        parse_time,
        query_gpu_devices,
        query_logs,
        query_runs,
        query_stages,
        query_stats,
        stage_stats,
    )
    from stagewatch.daemon.query._readmodels import RunNotFound, list_runs, load_audit, resolve_run_id
