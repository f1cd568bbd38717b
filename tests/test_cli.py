"""The `stagewatch` command as a user types it."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import open3d as o3d
import pytest

import stagewatch
from tests.conftest import DaemonProcess, sw


def test_demo_runs_the_pipeline_and_says_where_the_results_are(home: Path) -> None:
    result = sw("demo", "--home", str(home), "--frames", "50", "--no-ui")
    assert result.returncode == 0, result.stderr
    assert "frame_047" in result.stdout and "audit trail" in result.stdout
    (run_dir,) = (home / "runs").iterdir()
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["complete"] and audit["status"] == "finished_with_failures"  # frame 47 failed; it went on
    assert [(e["stage"], e["sample_id"]) for e in audit["errors"]] == [("preprocessing", "frame_047")]
    failing_input = Path(audit["errors"][0]["input_path"])  # the file the frame was read from
    assert failing_input == (home / "datasets" / "demo" / "images" / "frame_047.png").resolve()
    assert failing_input.is_file()
    # The pipeline logs the failure where it catches it: the line still belongs to the stage and
    # sample, and names the pipeline's logger, not a module of stagewatch.
    errors = json.loads(
        sw("query", "--home", str(home), "--stage", "preprocessing", "--level", "ERROR", "--json").stdout
    )
    assert [(r["stage"], r["sample_id"], r["logger"]) for r in errors["logs"]] == [
        ("preprocessing", "frame_047", "perception")
    ]
    assert audit["counts"]["stages"] == 50 + 4 * 49  # preprocessing fails on frame 47, the rest skip it
    cloud = o3d.t.io.read_point_cloud(str(run_dir / "stages" / "lidar_segmentation" / "frame_000_points.ply"))
    assert cloud.point["label"].numpy().max() > 0  # the detector clustered some objects
    assert not (home / "run" / "ingest.sock").exists()  # the demo's daemon was stopped
    doctor = sw("doctor", "--home", str(home))  # a home at rest, fresh from the demo, is healthy
    assert doctor.returncode == 0 and "PROBLEM" not in doctor.stdout, doctor.stdout

    runs = json.loads(sw("runs", "--home", str(home), "--json").stdout)
    assert runs[0]["run_id"] == run_dir.name and runs[0]["failed_stage"] == "preprocessing"
    shown = sw("show", run_dir.name[:6], "--home", str(home))
    assert shown.returncode == 0 and "frame_047" in shown.stdout and "Traceback" in shown.stdout
    page = json.loads(sw("show", run_dir.name, "--home", str(home), "--json").stdout)
    assert page["run_id"] == run_dir.name and len(page["stages"]) == 100  # a page of the trail
    assert page["stages_page"] == {"offset": 0, "limit": 100, "total": 50 + 4 * 49}
    full = json.loads(sw("show", run_dir.name, "--home", str(home), "--json", "--all").stdout)
    assert full["run_id"] == run_dir.name and len(full["stages"]) == 50 + 4 * 49
    assert full["stages"][:100] == page["stages"]
    assert full["accuracy"]["stages"]["segmentation"]["kind"] == "mask"

    # Accuracy against the demo's golden dataset: live numbers equal a batch recomputation.
    assert "accuracy against" in result.stdout and "mAP" in result.stdout
    live = json.loads((run_dir / "accuracy.json").read_text())
    assert live["finished"] and live["dataset_name"] == "demo-golden"
    detection = live["stages"]["detection"]
    assert sum(detection["counts"].values()) == 49 and detection["counts"]["unlabeled"] == 0
    assert 0 < detection["counts"]["wrong"] < 49 and 0.3 < detection["metrics"]["coco"]["AP50"] < 0.99  # mistakes
    batch = json.loads(sw("eval", "--run", run_dir.name, "--home", str(home), "--json").stdout)
    assert batch["stages"] == live["stages"]
    assert "accuracy against" in sw("show", run_dir.name[:8], "--home", str(home)).stdout

    # The demo logs like a pipeline: a line a frame, warnings on glare, the error on frame 47.
    logs = json.loads(sw("query", "--home", str(home), "--json", "--limit", "1000").stdout)["logs"]
    assert sum(line["level"] == "INFO" and line["stage"] == "detection" for line in logs) == 49
    glare = [line for line in logs if line["level"] == "WARNING"]
    assert glare and all("glare" in line["message"] and line["sample_id"] for line in glare)
    errors = [line for line in logs if line["level"] == "ERROR"]
    assert [e["message"][:19] for e in errors] == ["frame_047 skipped: "] and errors[0]["stage"] == "preprocessing"
    assert " detected" not in result.stdout + result.stderr  # logged to stagewatch, not over the summary
    validated = sw("gt", "validate", str(home / "datasets" / "demo" / "golden.yaml"), "--json")
    assert validated.returncode == 0 and json.loads(validated.stdout)["stages"]["segmentation"]["formats"] == {
        ".png": 25,
        ".npy": 25,
    }


def test_unknown_and_ambiguous_run_ids_exit_1_with_a_message(daemon: DaemonProcess) -> None:
    for _ in range(20):  # 20 runs: some share a first hex digit
        with stagewatch.init(pipeline="p", home=daemon.home) as run, run.stage("s"):
            pass
        assert run.flush(10)
    daemon.audit(run.id)
    unknown = sw("show", "zzzz", "--home", str(daemon.home))
    assert unknown.returncode == 1 and "no run with id 'zzzz'" in unknown.stderr
    first_digits = [p.name[0] for p in (daemon.home / "runs").iterdir()]
    shared = next(d for d in first_digits if first_digits.count(d) > 1)
    ambiguous = sw("show", shared, "--home", str(daemon.home))
    assert ambiguous.returncode == 1 and "ambiguous" in ambiguous.stderr
    hostile = sw("show", "../../etc", "--home", str(daemon.home))
    assert hostile.returncode == 1


def test_bad_arguments_exit_2(home: Path) -> None:
    assert sw("runs", "--limit", "-3", "--home", str(home)).returncode == 2
    assert sw("show", " ", "--home", str(home)).returncode == 2  # no run named, as `query --run ""`
    assert sw("demo", "--frames", "10", "--home", str(home)).returncode == 2
    bad = sw("daemon", "--home", str(home), "--endpoint", "http://example.com")
    assert bad.returncode == 2 and "expected an endpoint like ipc://" in bad.stderr


@pytest.mark.parametrize("value", ["-5%", "-0.5", "-1e3", "-.5%"])
def test_a_negative_share_reaches_the_options_own_check(home: Path, value: str) -> None:
    """argparse reads "-5%" as an option; the user read "expected one argument", not what the option takes."""
    refused = sw("compare", "abc", "--accuracy-drop", value, "--home", str(home))
    assert refused.returncode == 2 and f"between 0% and 100%, got '{value}'" in refused.stderr, refused.stderr


def test_runs_on_an_empty_home_says_so(home: Path) -> None:
    result = sw("runs", "--home", str(home))
    assert result.returncode == 0 and "no runs yet" in result.stdout
    stats = sw("stats", "--home", str(home))  # no stage: said so, not a heading over nothing
    assert stats.returncode == 0 and "Traceback" not in stats.stderr
    assert stats.stdout.startswith("no stage execution matches these filters"), stats.stdout


def test_a_second_daemon_on_the_same_home_is_refused(daemon: DaemonProcess) -> None:
    second = sw("daemon", "--home", str(daemon.home), timeout_s=30)
    assert (
        second.returncode == 1 and f"another stagewatch daemon (pid {daemon.process.pid}) is running" in second.stderr
    )


def test_a_refused_command_names_what_holds_the_home_and_a_rebuild_says_nothing_of_nothing(home: Path) -> None:
    """A daemon refused while a rebuild runs is told a rebuild holds the home (it once read
    "another stagewatch daemon"); the rebuild itself logs no "run index: 0 pairs"."""
    import os

    from stagewatch.daemon.base._layout import DaemonHome
    from stagewatch.daemon.base._lock import HomeLock

    run = stagewatch.init(pipeline="p", home=home)  # no daemon: spooled, then a daemon takes it
    with run.stage("s"):
        pass
    run.finish()
    stagewatch.shutdown()
    daemon = DaemonProcess(home).start()
    daemon.stop()
    rebuilt = sw("rebuild", "--home", str(home))
    assert rebuilt.returncode == 0 and "0 (run, date) pairs" not in rebuilt.stderr + rebuilt.stdout, rebuilt.stderr
    held = HomeLock(DaemonHome.of(home), "rebuild")
    held.take()  # as a rebuild holds it while it runs
    try:
        refused = sw("daemon", "--home", str(home), timeout_s=30)
        assert refused.returncode == 1, refused.stderr
        assert f"`stagewatch rebuild` (pid {os.getpid()}) is running on" in refused.stderr, refused.stderr
        assert "another stagewatch daemon" not in refused.stderr
        again = sw("rebuild", "--home", str(home))
        assert again.returncode == 1 and "`stagewatch rebuild`" in again.stderr and "daemon" not in again.stderr
    finally:
        held.release()


def test_show_pages_a_runs_executions_and_streams_its_whole_trail(daemon: DaemonProcess) -> None:
    """`show` reads a run of any length a page at a time: statistics and executions from the
    table, the trail's JSON a page of stages (--page/--limit), or streamed whole (--all). Each
    stage is on disk once: audit.json holds the head, the stages are stages.jsonl's lines."""
    with stagewatch.init(pipeline="p", home=daemon.home) as run:
        for i in range(30):
            for stage in ("decode", "detect"):
                with contextlib.suppress(ValueError), run.stage(stage, sample_id=f"s{i:02d}"):
                    if stage == "detect" and i in (7, 21):
                        raise ValueError(f"nothing in s{i:02d}")
    whole = daemon.audit(run.id)
    assert len(whole["stages"]) == 60 and not whole["problems"]
    head = json.loads((daemon.home / "runs" / run.id / "audit.json").read_text())
    assert "stages" not in head and head["stages_ended"] == 60
    home = ["--home", str(daemon.home)]

    shown = sw("show", run.id, *home, "--limit", "5").stdout
    assert "stage executions 1-5 of 60 (failures first" in shown
    listed = [line.split()[2] for line in shown.splitlines() if line.startswith("  20")]  # the sample column
    assert listed[:2] == ["s07", "s21"] and len(listed) == 5
    assert "decode" in shown and "Traceback" in shown and "nothing in s21" in shown
    by_time = sw("show", run.id, *home, "--order", "time", "--page", "12", "--limit", "5").stdout
    assert "stage executions 56-60 of 60 (by start" in by_time and "s29" in by_time
    assert "past the last page" in sw("show", run.id, *home, "--page", "13", "--limit", "5").stdout

    page = json.loads(sw("show", run.id, *home, "--json", "--page", "3", "--limit", "7").stdout)
    assert page["stages_page"] == {"offset": 14, "limit": 7, "total": 60}
    assert page["stages"] == whole["stages"][14:21]
    streamed = json.loads(sw("show", run.id, *home, "--json", "--all").stdout)
    assert streamed["stages"] == whole["stages"] and streamed["schema"] == "stagewatch.audit/1"
    refused = sw("show", run.id, *home, "--all")
    assert refused.returncode == 2 and "--all goes with --json" in refused.stderr


def test_show_survives_a_damaged_audit_and_marks_the_run_incomplete(daemon: DaemonProcess) -> None:
    with stagewatch.init(pipeline="p", home=daemon.home) as run:
        for i in range(3):
            with run.stage("detection", sample_id=f"s{i}"):
                pass
    daemon.audit(run.id)
    daemon.stop()
    audit_path = daemon.home / "runs" / run.id / "audit.json"
    audit_path.write_text(audit_path.read_text()[:100])  # truncated by hand
    shown = sw("show", run.id, "--home", str(daemon.home))
    assert shown.returncode == 0
    assert "INCOMPLETE" in shown.stdout and "damaged" in shown.stdout
    full = json.loads(sw("show", run.id, "--home", str(daemon.home), "--json").stdout)
    assert [s["sample_id"] for s in full["stages"]] == ["s0", "s1", "s2"]


def test_a_page_or_limit_past_what_a_query_takes_or_not_in_ascii_digits_is_refused_first(home: Path) -> None:
    """`show RUN --page 10**20` printed the run's head then failed; with --json the same page (and
    `--limit 10**20`: every stage) was taken; `--page ١٢` (Arabic-Indic digits) was read as 12."""
    for args in (
        ("--page", "100000000000000000000"),
        ("--page", "100000000000000000000", "--json"),
        ("--limit", "99999999999999999999", "--json"),
        ("--page", "2147483647", "--limit", "2147483648"),
        ("--page", "١٢"),
        ("--limit", "²"),
        ("--page", "0"),
    ):
        refused = sw("show", "some-run", "--home", str(home), *args)
        assert refused.returncode == 2 and refused.stdout == "", (args, refused.stdout)
        assert "argument --" in refused.stderr and "expected a p" in refused.stderr, refused.stderr  # positive, page
    assert sw("runs", "--home", str(home), "--limit", "١٢").returncode == 2


def test_show_prints_no_input_or_sample_a_failed_stage_did_not_have(daemon: DaemonProcess) -> None:
    """A stage that failed with no sample and no input was shown "failed on None" and "input: None"."""
    with stagewatch.init(pipeline="p", home=daemon.home) as run:
        with contextlib.suppress(ValueError), run.stage("calibrate"):
            raise ValueError("no intrinsics")
        with contextlib.suppress(ValueError), run.stage("decode", sample_id="s1", input_path="/data/s1.png"):
            raise ValueError("bad header")
    daemon.audit(run.id)
    shown = sw("show", run.id, "--home", str(daemon.home)).stdout
    assert "None" not in shown, shown
    assert "calibrate failed at " in shown and "ValueError: no intrinsics" in shown
    assert "decode failed on s1 at " in shown and "  input: /data/s1.png" in shown


def test_show_of_a_run_whose_stage_table_cannot_be_read_shows_its_trail_still(home: Path) -> None:
    """The stage_executions table's newest commit cut short: `show` printed the run's head and
    then gave up (exit 2), though the run's trail (audit.json, stages.jsonl) was whole."""
    from tests.daemon.test_delta_log import _history, _last_commit

    _history(home)
    commit = _last_commit(home, "stage_executions")
    commit.write_bytes(commit.read_bytes()[:40])
    run = json.loads(sw("runs", "--json", "--home", str(home)).stdout)[0]
    shown = sw("show", run["run_id"], "--home", str(home))
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert "per-stage figures not shown: the stage_executions table cannot be read" in shown.stdout, shown.stdout
    assert "executions not shown" in shown.stdout and "saved outputs under" in shown.stdout
