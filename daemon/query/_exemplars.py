"""Every percentile has its exemplar: per stage, the execution nearest its p95 and p99 and the
one that took longest, so a figure opens the sample behind it.

One SQL query over `stage_executions`: the quantiles per stage, then per stage the row whose
duration is nearest each (`arg_min` of the distance; ties go to the earliest in the log, so
the answer does not change between reads) and the row of the largest (`arg_max`).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from stagewatch.daemon.query._hosts import hosts_of
from stagewatch.daemon.query._query import Filters, stage_where
from stagewatch.daemon.query._sql import Homes, homes_of, select

EXEMPLARS = ("p95", "p99", "max")
_ROW = "struct_pack(run_id := m.run_id, sample_id := m.sample_id, input_path := m.input_path, duration_ms := m.duration_ms, status := m.status)"  # noqa: E501

_SQL = f"""SELECT * FROM (
WITH matched AS (SELECT * FROM rows{{where}}),
quantiles AS (
    SELECT stage, quantile_cont(duration_ms, [0.95, 0.99]) AS q
    FROM matched WHERE duration_ms IS NOT NULL GROUP BY stage
)
SELECT m.stage,
       arg_min({_ROW}, (abs(m.duration_ms - q.q[1]), m.lsn)) AS p95,
       arg_min({_ROW}, (abs(m.duration_ms - q.q[2]), m.lsn)) AS p99,
       arg_max({_ROW}, (m.duration_ms, -m.lsn)) AS max
FROM matched AS m JOIN quantiles AS q USING (stage)
WHERE m.duration_ms IS NOT NULL
GROUP BY m.stage ORDER BY m.stage)"""


def links_of(row: dict[str, Any], stage: str) -> dict[str, str]:
    """Dashboard links (relative: '?page=...') to the execution's sample on the Run page, whose
    waterfall opens on it, and to its run's log lines of that stage."""
    run = urllib.parse.quote(row["run_id"], safe="")
    sample = urllib.parse.quote(row["sample_id"] or "", safe="")
    return {
        "case": f"?page=run&run={run}&sample={sample}",
        "logs": f"?page=logs&run={run}&stage={urllib.parse.quote(stage, safe='')}",
    }


def query_exemplars(home: Homes, filters: Filters) -> dict[str, dict[str, dict[str, Any]]]:
    """Per stage: for p95, p99 and max, the execution behind it (run_id, sample_id, input_path,
    duration_ms, status; read over several homes, its run's host too) and its links."""
    where = stage_where(home, filters)
    rows = select(home, "stage_executions", _SQL.format(where=where.sql), where.params, None, where.dates).to_pylist()
    if len(homes_of(home)) > 1:
        hosts = hosts_of(home, [row[name]["run_id"] for row in rows for name in EXEMPLARS])
        for row in rows:
            for name in EXEMPLARS:
                row[name]["host"] = hosts.get(row[name]["run_id"])
    return {
        row["stage"]: {name: row[name] | {"links": links_of(row[name], row["stage"])} for name in EXEMPLARS}
        for row in rows
    }
