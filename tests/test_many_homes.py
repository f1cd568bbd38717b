"""Many homes as one: ten homes filled by ten real daemons (one tiny run each, on hosts named
apart), read by one `stagewatch runs` / `stats` / `query` with --home given ten times or as a glob."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, run_python, sw, wait_for

HOMES = 10

# The host's name, patched at the system edge in the pipeline's own process: ten machines' homes.
# Each stage logs a line (through the stdlib handler), so log rows are read over the homes too.
PIPELINE = """
import logging, socket
socket.gethostname = lambda: {host!r}
import stagewatch
log = logging.getLogger("fleet")
log.setLevel(logging.INFO)
log.addHandler(stagewatch.LoggingHandler())
run = stagewatch.init(pipeline="fleet", home={home!r})
for frame in range(2):
    with run.stage("detection", sample_id=f"f{{frame}}"):
        log.info("frame %s seen", frame)
run.finish()
assert run.flush(10), "the daemon did not acknowledge the run"
print(run.id)
"""

# A run in progress (no row in the runs table until it ends): it waits for its stdin to close.
IN_PROGRESS = """
import logging, socket, sys
socket.gethostname = lambda: {host!r}
import stagewatch
log = logging.getLogger("fleet")
log.setLevel(logging.INFO)
log.addHandler(stagewatch.LoggingHandler())
run = stagewatch.init(pipeline="fleet", home={home!r})
with run.stage("detection", sample_id="f0"):
    log.info("frame 0 seen")
assert run.flush(10), "the daemon did not acknowledge the stage"
print(run.id, flush=True)
sys.stdin.read()
run.finish()
run.flush(10)
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Ten homes, each filled by its own daemon in turn (two cores: one at a time)."""
    base = Path(str(tmp_path_factory.mktemp("fleet")))
    runs = {}
    for index in range(HOMES):
        home, host = base / f"host{index:02}", f"camera-{index:02}"
        daemon = DaemonProcess(home).start()
        try:
            result = run_python(PIPELINE.format(host=host, home=str(home)))
            assert result.returncode == 0, result.stderr
            runs[result.stdout.split()[-1]] = host
            daemon.audit(result.stdout.split()[-1])
        finally:
            daemon.stop()
    return base, runs


def test_runs_over_ten_homes_lists_every_run_with_its_host(fleet) -> None:
    base, runs = fleet
    homes = [arg for index in range(HOMES) for arg in ("--home", str(base / f"host{index:02}"))]
    listed = sw("runs", *homes, "--json")
    assert listed.returncode == 0, listed.stderr
    assert {run["run_id"]: run["host"] for run in json.loads(listed.stdout)} == runs
    printed = sw("runs", "--home", str(base / "host*"))  # a glob: the same ten
    assert all(run_id in printed.stdout and host in printed.stdout for run_id, host in runs.items())
    one = sw("runs", "--home", str(base / "host03"), "--json")
    assert [run["host"] for run in json.loads(one.stdout)] == ["camera-03"]
    of_host = sw("runs", "--home", str(base / "host*"), "--host", "camera-07", "--limit", "1", "--json")
    assert [(run["run_id"], run["host"]) for run in json.loads(of_host.stdout)] == [
        next((run_id, host) for run_id, host in runs.items() if host == "camera-07")
    ]  # the host's run, though runs of other hosts started after it; none of an unknown host
    assert json.loads(sw("runs", "--home", str(base / "host*"), "--host", "x' OR '1'='1", "--json").stdout) == []


def test_stats_and_query_over_ten_homes(fleet) -> None:
    base, runs = fleet
    stats = json.loads(sw("stats", "--home", str(base / "host*"), "--json").stdout)
    (detection,) = [entry for entry in stats if entry["stage"] == "detection"]
    assert detection["count"] == 2 * HOMES
    assert {entry["wall"]["runs"] for entry in stats if entry.get("outside_stages")} == {HOMES}
    run_id = next(iter(runs))
    found = json.loads(sw("query", "--home", str(base / "host*"), "--run", run_id[:8], "--json").stdout)
    assert [row["host"] for row in found["runs"]] == [runs[run_id]] and len(found["stages"]) == 2
    assert found["audit"]["run_id"] == run_id  # read from the home that holds it
    hosts = json.loads(sw("query", "--home", str(base / "host*"), "--host", "camera-07", "--json").stdout)
    assert [row["host"] for row in hosts["runs"]] == ["camera-07"]


def test_bad_homes_get_a_clear_error(fleet) -> None:
    base, _runs = fleet
    nothing = sw("runs", "--home", str(base / "nowhere*"))
    assert nothing.returncode == 2 and "got no folder" in nothing.stderr
    several = sw("show", "--home", str(base / "host01"), "--home", str(base / "host02"), "deadbeef")
    assert several.returncode == 2 and "expected one --home" in several.stderr
    mistyped = sw("runs", "--home", str(base / "host01"), "--home", str(base / "hots02"))
    assert mistyped.returncode == 2 and "hots02" in mistyped.stderr and "no such folder" in mistyped.stderr
    empty = sw("runs", "--home", "")
    assert empty.returncode == 2 and "empty path" in empty.stderr


def test_compare_reads_two_runs_from_two_homes(fleet) -> None:
    base, runs = fleet
    by_host = {host: run_id for run_id, host in runs.items()}
    a, b = by_host["camera-01"], by_host["camera-02"]
    compared = sw("compare", "--home", str(base / "host*"), a[:8], b[:8], "--json")
    assert compared.returncode == 0, compared.stderr
    document = json.loads(compared.stdout)
    assert [stage["stage"] for stage in document["stages"]] == ["detection"]
    environment = json.dumps(document["environment"])  # the hosts differ, each from its own home's run
    assert "camera-01" in environment and "camera-02" in environment


def _query(*arguments: str) -> dict:
    found = sw("query", *arguments, "--json", "--limit", "1000")
    assert found.returncode == 0, found.stderr
    return json.loads(found.stdout)


def _query_found(*arguments: str) -> dict | None:
    """`_query`, None while the run it names is not found yet (its folder not written yet)."""
    found = sw("query", *arguments, "--json", "--limit", "1000")
    return json.loads(found.stdout) if found.returncode == 0 else None


def test_stage_and_log_rows_carry_their_host_over_several_homes(fleet) -> None:
    """Only a run's row names its host: over several homes, its stage executions and log lines
    say it too (joined by run id), and --host narrows them as it narrows the runs."""
    base, runs = fleet
    every = _query("--home", str(base / "host*"))
    assert sorted((row["run_id"], row["host"]) for row in every["stages"]) == sorted(2 * [*runs.items()])
    assert sorted((row["run_id"], row["host"]) for row in every["logs"]) == sorted(2 * [*runs.items()])
    narrowed = _query("--home", str(base / "host*"), "--host", "camera-07")
    assert [row["host"] for row in narrowed["runs"]] == ["camera-07"]
    assert [row["host"] for row in narrowed["stages"]] == ["camera-07"] * 2
    assert [row["host"] for row in narrowed["logs"]] == ["camera-07"] * 2
    one = _query("--home", str(base / "host03"))
    assert len(one["stages"]) == 2 and "host" not in one["stages"][0]  # one home: the rows as stored
    stats = json.loads(sw("stats", "--home", str(base / "host*"), "--json").stdout)
    (detection,) = [entry for entry in stats if entry["stage"] == "detection"]
    for exemplar in detection["exemplars"].values():  # the executions behind p95, p99, max: their host
        assert exemplar["host"] == runs[exemplar["run_id"]]
    printed = sw("query", "--home", str(base / "host*"), "--host", "camera-07", "--stage", "detection")
    rows = [line for line in printed.stdout.splitlines() if line.startswith("  ")]  # 2 executions, 2 log lines
    assert len(rows) == 4 and all(line.startswith("  camera-07 ") for line in rows), printed.stdout


def test_a_run_in_progress_carries_its_host_from_its_audit_head(fleet, daemon) -> None:
    """A run in progress has no runs row yet: its rows' host is its audit head's, and --host
    finds it among the daemon's runs in progress."""
    base, _runs = fleet
    pipeline = subprocess.Popen(
        [sys.executable, "-c", IN_PROGRESS.format(host="camera-live", home=str(daemon.home))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = pipeline.stdout.readline().strip()
        homes = ("--home", str(daemon.home), "--home", str(base / "host01"))

        def stored() -> dict | None:  # its stage and log rows, once written
            rows = _query_found(*homes, "--run", run_id)
            return rows if rows and rows["stages"] and rows["logs"] else None

        found = wait_for(stored, 60, 0.5)
        assert found["runs"] == []  # not ended: no row of its own yet
        assert [row["host"] for row in found["stages"]] == ["camera-live"]
        assert [row["host"] for row in found["logs"]] == ["camera-live"]
        live = wait_for(lambda: _query(*homes, "--host", "camera-live")["stages"], 30, 0.5)  # status.json: each second
        assert [row["run_id"] for row in live] == [run_id]
    finally:
        pipeline.stdin.close()
        pipeline.wait(30)


def test_the_dashboard_learns_its_homes_from_its_environment(tmp_path: Path) -> None:
    """`stagewatch ui` tells `panel serve` its homes in STAGEWATCH_HOMES; one home reads as a
    Path (the single-home path of every reader), a home named twice once, empty parts none."""
    from stagewatch.ui._serve import HOMES_VARIABLE, configured_homes, homes_environment

    homes = [tmp_path / "a", tmp_path / "b"]
    assert configured_homes(homes_environment(homes)) == homes
    assert configured_homes(homes_environment(homes[:1])) == homes[0]
    twice = {HOMES_VARIABLE: json.dumps([str(homes[1]), "", str(homes[1])]), "STAGEWATCH_HOME": str(homes[0])}
    assert configured_homes(twice) == homes[1]
    colon = tmp_path / "x:y"  # a path holding os.pathsep is one home
    assert configured_homes(homes_environment([colon])) == colon
    assert configured_homes(homes_environment([colon, homes[0]])) == [colon, homes[0]]
    assert configured_homes({HOMES_VARIABLE: "not json", "STAGEWATCH_HOME": str(homes[0])}) == homes[0]
    assert configured_homes({"STAGEWATCH_HOME": str(homes[0])}) == homes[0]  # plain `panel serve`, as before


def test_a_prefix_ambiguous_in_one_home_is_ambiguous_over_them_all(tmp_path: Path) -> None:
    """'c' names two runs of home B: over A and B it is ambiguous (it named A's only run)."""
    from stagewatch.daemon.query._readmodels import AmbiguousRun, resolve_run_in

    runs = {"A": ["c583fdfe-0000-4000-8000-000000000001"], "B": ["c34f57f0-0000-4000-8000-000000000002"]}
    runs["B"].append("c6464f69-0000-4000-8000-000000000003")
    for home, ids in runs.items():
        for run_id in ids:
            (tmp_path / home / "runs" / run_id).mkdir(parents=True)
    homes = [tmp_path / "A", tmp_path / "B"]
    with pytest.raises(AmbiguousRun, match="ambiguous"):
        resolve_run_in(homes, "c")
    assert resolve_run_in(homes, "c5") == runs["A"][0]


def test_a_copy_of_a_home_given_with_it_shows_each_run_once_and_the_bigger_copy_wins(fleet, tmp_path: Path) -> None:
    """A run id is a UUID: the same run in two homes (a copy made with cp -r) is one run. Its
    rows are read from the copy that holds more of it (its longer stages.jsonl: a copy made
    while it ran stops short), the home given first on a tie; the other copy's rows are not read."""
    from deltalake import DeltaTable

    from stagewatch.daemon.query._readmodels import holding, read_table
    from stagewatch.daemon.query._sql import select

    base, runs = fleet
    original = base / "host01"
    run_id = next(run for run, host in runs.items() if host == "camera-01")
    shutil.copytree(original, tmp_path / "whole", symlinks=True)
    shutil.copytree(original, tmp_path / "short", symlinks=True)
    short = tmp_path / "short"  # a copy that holds less of the run: one stage row and line fewer
    DeltaTable(str(short / "metrics" / "stage_executions")).delete("sample_id = 'f1'")
    lines = (short / "runs" / run_id / "stages.jsonl").read_text().splitlines(keepends=True)
    (short / "runs" / run_id / "stages.jsonl").write_text("".join(lines[:1]))
    other = next(run for run, host in runs.items() if host == "camera-02")

    homes = [original, tmp_path / "whole", base / "host02"]
    listed = json.loads(sw("runs", *(f"--home={home}" for home in homes), "--json").stdout)
    assert sorted(run["run_id"] for run in listed) == sorted([run_id, other])
    found = _query(*(f"--home={home}" for home in homes), "--run", run_id[:8])
    assert len(found["runs"]) == 1 and len(found["stages"]) == 2 and len(found["logs"]) == 2
    stats = json.loads(sw("stats", *(f"--home={home}" for home in homes), "--json").stdout)
    assert [entry["count"] for entry in stats if entry["stage"] == "detection"] == [4]
    for table in ("runs", "stage_executions", "logs"):
        assert select(homes, table, "SELECT count(*) AS n FROM rows WHERE run_id = ?", [run_id])["n"][0].as_py() > 0
        counted = select(homes, table, "SELECT count(*) AS n FROM rows")["n"][0].as_py()
        assert counted == read_table(homes, table).num_rows == read_table(homes[::2], table).num_rows

    shorter_first = [short, original]  # the bigger copy wins, though given second
    assert holding(shorter_first, run_id) == original
    rows = select(shorter_first, "stage_executions", "SELECT sample_id FROM rows ORDER BY sample_id")
    assert rows["sample_id"].to_pylist() == ["f0", "f1"]
    assert sorted(read_table(shorter_first, "stage_executions")["sample_id"].to_pylist()) == ["f0", "f1"]

    damaged = tmp_path / "damaged"  # as long a stages.jsonl, its audit.json cut in half (a copy's bad block)
    shutil.copytree(original, damaged, symlinks=True)
    head = damaged / "runs" / run_id / "audit.json"
    head.write_bytes(head.read_bytes()[: head.stat().st_size // 2])
    assert holding([damaged, original], run_id) == original  # a tie: the copy whose trail reads wins
    head.write_bytes((original / "runs" / run_id / "audit.json").read_bytes())  # mended: first given wins again
    assert holding([damaged, original], run_id) == damaged
