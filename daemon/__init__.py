"""stagewatch.daemon: the daemon, its read models, and the query API over them.

from stagewatch.daemon import Filters, parse_time, query_stages, query_stats
table = query_stages(Path("output"), Filters(stage="detection", since=parse_time("7d")))
stats = query_stats(Path("output"), Filters(since=parse_time("30d")))   # per stage, as `stagewatch stats`
"""

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
