"""`stagewatch doctor`: is the daemon up, is the disk fine, did anything go wrong?"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stagewatch._home import ipc_path
from stagewatch.daemon.base._derived import DAEMON_CHECKPOINT, STATUS, damaged_in_place, peek, set_aside_copies
from stagewatch.daemon.base._disk import OK, disk_state, folder_bytes, read_disk
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._lock import lock_role
from stagewatch.daemon.base._settings import Config
from stagewatch.daemon.maintenance._scrub import damaged_data_files
from stagewatch.daemon.maintenance._scrub import load as load_scrub
from stagewatch.daemon.tables._checkpoint import tables_behind
from stagewatch.daemon.tables._store import DAEMON_TABLES, TABLES
from stagewatch.daemon.tables._tables import (
    DAEMON_APP,
    STRAY_MARK,
    DamagedTable,
    ForeignTable,
    committed_lsn,
    damage_of_table,
    has_log,
    own_table,
    stray_log_entries,
    table_path,
)
from stagewatch.daemon.tables._watch import gone_tables

STALE_STATUS_S = 30.0


def examine(home: Path, config: Config, scrub: Callable[[], object] | None = None) -> dict[str, Any]:
    """Every check; `scrub` (doctor --scrub) re-reads every segment and part first."""
    if scrub is not None:
        scrub()
    status = _status(home)
    checks = [
        _daemon_check(home, status),
        _disk_check(home, config),
        *_data_checks(home, status),
        _scrub_check(home),
        _derived_check(DaemonHome.of(home)),
        _rebuild_check(DaemonHome.of(home)),
    ]
    return {"home": str(home), "healthy": all(c["ok"] for c in checks), "checks": checks}


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail}


def _status(home: Path) -> dict[str, Any]:
    return peek(STATUS, DaemonHome.of(home)) or {}


def _derived_check(home: DaemonHome) -> dict[str, Any]:
    """Damaged derived state: in place (its owner sets it aside when it next starts), or set
    aside and rebuilt, reported until someone has looked and deleted the copies."""
    found = [
        f"{spec.path(home)} is damaged ({wrong}); the daemon sets it aside when it next starts, {spec.remedy}"
        for spec, wrong in damaged_in_place(home)
    ]
    copies = set_aside_copies(home)
    if copies:
        shown = ", ".join(str(path) for path in copies[:5]) + (" ..." if len(copies) > 5 else "")
        found.append(
            f"{len(copies)} damaged state file(s) were set aside and their state rebuilt from the event log: "
            f"{shown} (the daemon's log says why); a disk or power problem? delete them to clear this"
        )
    if not found:
        return _check("state", True, "every derived state file reads whole")
    return _check("state", False, "; ".join(found))


def _scrub_check(home: Path) -> dict[str, Any]:
    found = load_scrub(DaemonHome.of(home))
    damaged = [*found.get("segments", {}), *found.get("parts", {})]
    if damaged:
        shown = ", ".join(damaged[:5]) + (" ..." if len(damaged) > 5 else "")
        detail = (
            f"damage found by scrubbing, remembered until repaired: {shown}; `stagewatch rebuild` "
            "rebuilds the tables from the event log"
        )
        return _check("scrub", False, detail)
    checked = found.get("checked")
    if checked:
        return _check("scrub", True, f"last full scrub: {checked['segments']} segment(s), {checked['parts']} part(s)")
    return _check("scrub", True, "no damage found (the daemon checks a sealed segment a minute; doctor --scrub all)")


def _spool_check(home: Path, spools: list[Path]) -> dict[str, Any]:
    """Spooled events wait for a daemon: while one runs it catches up, without one they wait on."""
    if spools and not daemon_running(home):
        return _check(
            "spool",
            False,
            f"{len(spools)} spool file(s) of events wait and no daemon runs to take them: "
            f"`stagewatch daemon --home {home}`",
        )
    return _check("spool", True, f"{len(spools)} spool file(s) waiting (clients still running or daemon catching up)")


def _tables_check(layout: DaemonHome) -> dict[str, Any]:
    """Each table's Delta log reads, is this home's, holds what the daemon's checkpoint counted
    and no stray entry; what the daemon set aside (a damaged or deleted table, an earlier
    version's layout, a stray log entry) is named until someone has looked and deleted it."""
    problems = [problem for table in TABLES if (problem := _table_problem(layout, table))] + gone_tables(layout)
    if problems:
        problems.append(
            "the daemon sets a damaged table aside and rebuilds it from the event log (running: when it next "
            "writes or compacts the table; stopped: when it starts), or run `stagewatch rebuild` (daemon stopped)"
        )
    problems += _behind_checkpoint(layout)
    strays = [entry for table in TABLES for entry in stray_log_entries(layout, table)]
    if strays:
        problems.append(
            f"{', '.join(map(str, strays))}: no file of its table's Delta log (a folder named like a commit?), it "
            "stands where a commit or checkpoint goes; the daemon moves it aside when it next commits to the table"
        )
    folder = layout.quarantined_tables
    aside = sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []
    tables = [name for name in aside if STRAY_MARK not in name]
    if tables:
        problems.append(
            f"{len(tables)} table(s) set aside in {folder} and rebuilt from the event log: {', '.join(tables[:5])} "
            "(the daemon's log says why); delete them to clear this"
        )
    moved = [name for name in aside if STRAY_MARK in name]
    if moved:
        problems.append(
            f"{len(moved)} stray entr(y/ies) of a table's Delta log moved to {folder}: {', '.join(moved[:5])} (they "
            "stood where commits go; the tables kept every row); delete them to clear this"
        )
    return _check("tables", not problems, "; ".join(problems) or "every table's Delta log reads")


def _table_problem(layout: DaemonHome, table: str) -> str | None:
    """What stops the table from being read: a link to another home's table, a damaged log."""
    try:
        own_table(layout, table)
    except ForeignTable as error:
        return str(error)
    damage = damage_of_table(layout, table)
    return None if damage is None else f"the {table} table cannot be read ({damage})"


def _behind_checkpoint(layout: DaemonHome) -> list[str]:
    """The daemon's tables that hold fewer rows than its checkpoint counted (their newest commits
    deleted by hand, say), judged as the daemon judges them at its start (`tables_behind`). Only
    while no daemon runs: a running one moves both as it flushes. A table gone, or whose log cannot
    be read, is said as such."""
    if daemon_running(layout.root):
        return []
    held = {}
    for table in DAEMON_TABLES:
        if has_log(table_path(layout, table)):
            with contextlib.suppress(DamagedTable):
                held[table] = committed_lsn(layout, table, DAEMON_APP)
    return [
        f"the {table} table holds fewer rows than the daemon's checkpoint counted (its newest commits deleted by "
        "hand?): its answers miss rows; the daemon rebuilds it at its next start, or run `stagewatch rebuild`"
        for table in tables_behind(peek(DAEMON_CHECKPOINT, layout) or {}, held)
    ]


def _rebuild_check(layout: DaemonHome) -> dict[str, Any]:
    """What a `stagewatch rebuild` killed before its end left: its staging folder."""
    staging = layout.rebuild_staging
    if not staging.is_dir():
        return _check("rebuild", True, "no unfinished rebuild left behind")
    if daemon_running(layout.root) and lock_role(layout) == "rebuild":
        return _check("rebuild", True, f"a `stagewatch rebuild` is running (building in {staging})")
    return _check(
        "rebuild",
        False,
        f"{staging} ({folder_bytes(staging) / 1e6:,.1f} MB) was left by a `stagewatch rebuild` that did not finish "
        "(killed?); the read models in use are not in it: the next `stagewatch rebuild` clears it, or delete it",
    )


def _data_files_check(layout: DaemonHome) -> dict[str, Any]:
    """Every data file of the tables' snapshots is there, of the size its log says, with a
    footer that reads (no whole read: `doctor --scrub` does that)."""
    damaged = damaged_data_files(layout)
    if not damaged:
        return _check("data files", True, "every data file of the tables is whole (size and footer)")
    shown = "; ".join(f"{path}: {damage}" for path, damage in sorted(damaged.items())[:5])
    more = f" (and {len(damaged) - 5} more)" if len(damaged) > 5 else ""
    return _check(
        "data files",
        False,
        f"{len(damaged)} damaged data file(s): {shown}{more}. Their rows are left out of every answer (with a "
        "warning); the event log holds them all: stop the daemon, then `stagewatch rebuild`",
    )


MAX_NAMED_TRAILS = 5


def _trails_check(layout: DaemonHome) -> dict[str, Any]:
    """Each run's audit trail reads whole: audit.json, and every line of stages.jsonl its head
    accounts for, checked as `show` and the Run page read them (`trail_problems`)."""
    from stagewatch.daemon.query._readmodels import trail_problems

    runs = layout.run_ids()
    damaged = [problems for run_id in sorted(runs) if (problems := trail_problems(layout.root, run_id))]
    if not damaged:
        return _check("audit trails", True, f"every run's audit trail reads whole ({len(runs)} run(s))")
    shown = "; ".join("; ".join(problems) for problems in damaged[:MAX_NAMED_TRAILS])
    more = f" (and {len(damaged) - MAX_NAMED_TRAILS} more run(s))" if len(damaged) > MAX_NAMED_TRAILS else ""
    return _check(
        "audit trails",
        False,
        f"{len(damaged)} run(s) with a damaged audit trail: {shown}{more}. Readers leave what is damaged out "
        "(the stages are in the tables); the event log holds it all: stop the daemon, then `stagewatch rebuild` "
        "writes the trails again",
    )


def _quarantine_check(layout: DaemonHome, quarantined: int, stats: dict[str, Any]) -> dict[str, Any]:
    """Rejected events are data a client lost: a problem to look at, not a detail."""
    dropped = stats.get("quarantine_dropped", 0)
    size = sum(p.stat().st_size for p in layout.quarantine.glob("*.jsonl")) if layout.quarantine.is_dir() else 0
    detail = f"{quarantined} rejected event(s), {size:,} bytes, in {layout.quarantine}"
    if dropped:
        detail += f"; {dropped} more counted but not kept (the quarantine was at its cap)"
    return _check("quarantine", quarantined == 0 and not dropped, detail)


def daemon_running(home: Path) -> bool:
    """True while a daemon holds the home's lock."""
    try:
        fd = os.open(DaemonHome.of(home).lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _daemon_check(home: Path, status: dict[str, Any]) -> dict[str, Any]:
    if not daemon_running(home):
        # A home at rest is healthy: pipelines keep their events (spool) until a daemon starts;
        # events waiting for one are the spool check's problem.
        return _check("daemon", True, f"not running on {home} (to record pipelines: `stagewatch daemon --home {home}`)")
    socket = _missing_socket(home, status)
    if socket is not None:
        return _check(
            "daemon",
            False,
            f"running (pid {status.get('pid')}) but its socket {socket} is gone (deleted?): no pipeline can reach "
            "it; restart it (`systemctl --user restart stagewatch`, or stop it and run `stagewatch daemon`)",
        )
    age = time.time() - status.get("updated_at", 0)
    if age > STALE_STATUS_S:
        return _check("daemon", False, f"running (pid {status.get('pid')}) but its status is {age:.0f}s old: stuck?")
    return _check("daemon", True, f"running, pid {status.get('pid')}, endpoint {status.get('endpoint')}")


def _missing_socket(home: Path, status: dict[str, Any]) -> Path | None:
    """The ipc socket file the running daemon listens on, if it is not there."""
    endpoint = status.get("endpoint") or DaemonHome.of(home).ingest_endpoint
    path = ipc_path(endpoint)
    return path if path is not None and not path.is_socket() else None


def _writes_check(stats: dict[str, Any], queued: int) -> dict[str, Any]:
    """Refused writes: a problem while writes wait for the disk (the daemon retries them); once
    each was retried and written, said as past. The last refusal named, with when."""
    refused = stats.get("write_errors") or 0
    if not refused:
        return _check("writes", True, "no refused writes")
    last = stats.get("last_write_error") or {}
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["at"])) if isinstance(last.get("at"), float) else "?"
    said = f" (the last, at {when}: {last['message']})" if isinstance(last.get("message"), str) else ""
    if queued:
        return _check(
            "writes",
            False,
            f"{refused} refused writes{said}; {queued} write(s) wait for the disk: the daemon retries them "
            "(free space, or make the home writable again); nothing is lost, the event log holds every event",
        )
    return _check("writes", True, f"{refused} write(s) refused earlier, each retried and written since{said}")


def _disk_check(home: Path, config: Config) -> dict[str, Any]:
    home.mkdir(parents=True, exist_ok=True)
    reading = read_disk(home, measure_home=config.disk.max_home_bytes is not None)
    state, problems = disk_state(reading, config.disk)
    detail = "; ".join(problems) or f"{reading.free_bytes / 2**30:.1f} GiB free"
    return _check("disk", state == OK, f"{state}: {detail}")


def _data_checks(home: Path, status: dict[str, Any]) -> list[dict[str, Any]]:
    stats = status.get("stats", {})
    recovery = stats.get("recovery", {})
    damaged = recovery.get("corrupt_regions", 0) + recovery.get("replay_corrupt_regions", 0)
    damaged += len(recovery.get("missing_ranges", [])) + (1 if recovery.get("truncated_bytes") else 0)
    damaged += recovery.get("replay_duplicates", 0) and 1
    layout = DaemonHome.of(home)
    strays = list(layout.quarantined_segments.glob("*"))  # remembered until someone looks
    spools = list(layout.spool.glob("*.spool")) if layout.spool.is_dir() else []
    quarantine = layout.quarantine
    quarantined = sum(1 for p in quarantine.glob("*.jsonl") for _ in p.open()) if quarantine.is_dir() else 0
    return [
        _tables_check(layout),
        _data_files_check(layout),
        _trails_check(layout),
        _check(
            "event log",
            damaged == 0,
            f"{damaged} damaged region(s) found at the last start" if damaged else "intact at the last start",
        ),
        _check(
            "segments",
            not strays,
            f"{len(strays)} file(s) that were no segment of the log set aside in "
            f"{layout.quarantined_segments}: look, then delete them"
            if strays
            else "every file in the log's folder is one of its segments",
        ),
        _writes_check(stats, status.get("disk_writes_queued") or 0),
        _check("internal", stats.get("internal_errors", 0) == 0, f"{stats.get('internal_errors', 0)} internal errors"),
        _spool_check(home, spools),
        _quarantine_check(layout, quarantined, stats),
    ]
