"""Many homes as one: ten homes filled by ten real daemons (one tiny run each, on hosts named
apart), read by one `stagewatch runs` / `stats` / `query` with --home given ten times or as a glob."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, run_python
from tests.test_gaps import sw

HOMES = 10

# The host's name, patched at the system edge in the pipeline's own process: ten machines' homes.
PIPELINE = """
import socket
socket.gethostname = lambda: {host!r}
import stagewatch
run = stagewatch.init(pipeline="fleet", home={home!r})
for frame in range(2):
    with run.stage("detection", sample_id=f"f{{frame}}"):
        pass
run.finish()
assert run.flush(10), "the daemon did not acknowledge the run"
print(run.id)
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
