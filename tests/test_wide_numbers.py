"""`stagewatch show` and `stats` over durations of 10**7 ms (a stage that hung for hours): every
column stays apart from the next (a cell printed fixed-width with no separator ran into its
neighbour: `54.052880076.493600056.88`)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import DaemonProcess, run_python, sw

HOURS_NS = 10**13  # 10**7 ms: how far the pipeline's clocks move while it hangs


def _hung_run(home: Path) -> str:
    """A run whose stage `hang` took 10**7 ms and whose second sample waited as long outside
    stages: the pipeline's clocks (wall and monotonic, its system edge) jump as a hung process's would."""
    code = f"""
import time
_monotonic, _wall, _hung = time.monotonic_ns, time.time_ns, [0]
time.monotonic_ns = lambda: _monotonic() + _hung[0]
time.time_ns = lambda: _wall() + _hung[0]
time.time = lambda: time.time_ns() / 1e9
import stagewatch
with stagewatch.init(pipeline="slow", home={str(home)!r}) as run:
    for sample in ("s0", "s1"):
        _hung[0] += {HOURS_NS}  # loading the sample: outside stages
        with run.stage("hang", sample_id=sample):
            _hung[0] += {HOURS_NS}
print(run.id)
"""
    ran = run_python(code)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.split()[-1]


HUNG_MS = r"1000\d{4}\.\d\d"  # 10**7 ms and the real time the stage or the gap took besides


def _cells(output: str, starts: str) -> list[str]:
    """The cells of the one line of `output` that starts with `starts`, split on spaces."""
    (line,) = [line for line in output.splitlines() if line.startswith(starts)]
    return line.removeprefix(starts).split()


def _hung(cells: list[str]) -> bool:
    return all(re.fullmatch(HUNG_MS, cell) for cell in cells)


def test_durations_of_ten_million_ms_keep_their_columns_apart(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "home").start()
    try:
        run_id = _hung_run(daemon.home)
        daemon.audit(run_id)
    finally:
        daemon.stop()
    shown = sw("show", run_id, "--home", str(daemon.home))
    assert shown.returncode == 0, shown.stderr
    hang = _cells(shown.stdout, "  hang ")  # runs, failed, median, p95, max, own MB, process peak MB
    assert len(hang) == 7 and hang[:2] == ["2", "0"] and _hung(hang[2:5]), shown.stdout
    outside = _cells(shown.stdout, "  (outside stages) ")
    assert outside[:2] == ["3", "-"] and _hung(outside[2:5]) and outside[5:] == ["(per", "sample)"], shown.stdout
    executions = [line.split() for line in shown.stdout.splitlines() if " s0 " in line or " s1 " in line]
    assert len(executions) == 2 and all(cells[3] == "ok" and _hung(cells[4:]) for cells in executions)

    stats = sw("stats", "--home", str(daemon.home))
    assert stats.returncode == 0, stats.stderr
    hang = _cells(stats.stdout, "hang ")  # count, failed, mean, median, p95, p99, max, MB, MB, time %
    assert hang[:2] == ["2", "0.0%"] and _hung(hang[2:7]) and len(hang) == 12, stats.stdout
    outside = _cells(stats.stdout, "(outside stages) ")
    assert outside[:2] == ["3", "-"] and _hung(outside[3:7]) and outside[7:9] == ["-", "-"], stats.stdout
    assert re.fullmatch(r"\d+\.\d%", outside[9]) and len(outside) == 10, stats.stdout
