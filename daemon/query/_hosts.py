"""Which host a row comes from, when several hosts' homes are read as one.

Only a run's row carries its `host` (the run_started event names it); a stage execution or a
log line belongs to a run, so its host is its run's. The host of a run is read from the runs
table (one query over every home's files, for the run ids at hand only), and for a run that has
no row there yet (in progress, or its end never recorded) from its audit head, in the home that
holds its folder: the head is written when the run starts and names its host. A row read from
one home is left as it is (no column added, nothing read): the single home costs nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from stagewatch.daemon.query._readmodels import active_runs_in, holding, load_audit_head
from stagewatch.daemon.query._sql import Homes, homes_of, select

HOST = "host"


def hosts_of(home: Homes, run_ids: Iterable[str | None]) -> dict[str, str | None]:
    """run id -> the host it ran on (None where nothing says): the runs table first, then the
    audit head of each run without a row."""
    wanted = sorted({run_id for run_id in run_ids if run_id})
    if not wanted:
        return {}
    sql = "SELECT run_id, host FROM rows WHERE run_id IN (SELECT unnest(?::VARCHAR[]))"
    found = select(home, "runs", sql, [wanted])
    hosts = dict(zip(found["run_id"].to_pylist(), found["host"].to_pylist(), strict=True))
    for run_id in wanted:
        if hosts.get(run_id) is None:
            hosts[run_id] = _head_host(home, run_id)
    return hosts


def _head_host(home: Homes, run_id: str) -> str | None:
    """The host the run's audit head names (None without a readable head, or for a run id that
    names no folder: a row edited by hand costs only its own host)."""
    try:
        host = load_audit_head(holding(home, run_id), run_id).get("host")
    except ValueError:
        return None
    return host if isinstance(host, str) else None


def with_hosts(home: Homes, rows: pa.Table) -> pa.Table:
    """`rows` (a table with a run_id column) with a `host` column at the end, when read over
    several homes; as it is over one home, or when it has no run_id or already a host."""
    if len(homes_of(home)) < 2 or "run_id" not in rows.column_names or HOST in rows.column_names:
        return rows
    hosts = hosts_of(home, pc.unique(rows["run_id"]).to_pylist())
    keys = pa.array(list(hosts), pa.string())
    values = pa.array(list(hosts.values()), pa.string())
    at = pc.index_in(rows["run_id"], value_set=keys)  # null where the run id is null
    return rows.append_column(HOST, pc.take(values, at))


def runs_on_host(home: Homes, host: str) -> list[str]:
    """The ids of the runs of `host`: its finished runs (the runs table) and those in progress
    (each home's daemon lists its runs in progress with their host)."""
    finished = select(home, "runs", "SELECT run_id FROM rows WHERE host = ?", [host])["run_id"].to_pylist()
    running = [run.get("run_id") for run in active_runs_in(home) if run.get("host") == host]
    return sorted({*finished, *(run_id for run_id in running if isinstance(run_id, str))})


def hosts_in(home: Homes) -> list[str]:
    """Every host the homes hold a run of (finished or in progress), sorted."""
    sql = "SELECT DISTINCT host FROM rows WHERE host IS NOT NULL AND host <> ''"
    finished = select(home, "runs", sql)["host"].to_pylist()
    running = [run.get("host") for run in active_runs_in(home)]
    return sorted({*finished, *(host for host in running if isinstance(host, str) and host)})
