"""The fault-injection suite: each scenario is bounded, uses loopback ipc only, and ends
with exact counts (emitted, in the log, in the read models, duplicates, lost).

Short by default (CI); STAGEWATCH_FAULTS_LONG=1 runs the long version from
docs/reliability.md. Run alone with: python -m pytest tests/faults -s
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from stagewatch.daemon.query._readmodels import audit_json_chunks, load_audit
from tests.conftest import DaemonProcess, wait_for
from tests.faults.conftest import fill_disk
from tests.faults.tally import LONG, run_id_of, start_pipeline, tally


def _finish(pipeline: subprocess.Popen[str], timeout_s: float = 300) -> dict:
    assert pipeline.wait(timeout_s) == 0
    return json.loads(pipeline.stdout.readline())


def _all_projected(daemon: DaemonProcess, run_id: str, stages: int, timeout_s: float = 120) -> dict:
    def done():
        audit = daemon.audit(run_id, complete=False)
        return audit if audit["counts"]["stages"] >= stages and audit["complete"] else None

    return wait_for(done, timeout_s)


def _exactly_once(
    daemon: DaemonProcess, home: Path, run_id: str, stages: int, result: dict, scenario: str, **report: object
) -> Any:
    """Wait until `stages` are projected, count, report, and assert none lost or doubled."""
    _all_projected(daemon, run_id, stages)
    counts = tally(scenario, home, run_id, result["stages"])
    counts.report(**report)
    assert (counts.lost, counts.log_duplicates, counts.read_model_duplicates) == (0, 0, 0)
    return counts


def test_kill_9_of_the_daemon_during_a_stream_loses_and_duplicates_nothing(daemon: DaemonProcess) -> None:
    stages, kills = (120_000, 10) if LONG else (20_000, 3)
    pipeline = start_pipeline(daemon.home, stages, pause_every=50)
    run_id = run_id_of(pipeline)
    rng = random.Random(7)
    recoveries = []
    for _ in range(kills):
        time.sleep(rng.uniform(0.2, 0.8))
        daemon.kill()
        started = time.monotonic()
        daemon.start()
        recoveries.append(time.monotonic() - started)
    result = _finish(pipeline)
    median_restart_s = round(sorted(recoveries)[len(recoveries) // 2], 2)
    counts = _exactly_once(
        daemon, daemon.home, run_id, stages, result, f"kill -9 daemon x{kills}", median_restart_s=median_restart_s
    )
    assert counts.in_log == counts.in_read_model == stages
    _trail_holds_each_stage_once(daemon.home, run_id, stages)


def _trail_holds_each_stage_once(home: Path, run_id: str, stages: int) -> None:
    """The run's trail (head + stages.jsonl), assembled and streamed, lists every stage once."""
    trail = load_audit(home, run_id)
    assert not trail["problems"] and trail["counts"]["stages"] == stages
    assert len({(stage["client_id"], stage["span"]) for stage in trail["stages"]}) == len(trail["stages"]) == stages
    assert json.loads(b"".join(audit_json_chunks(home, run_id)))["stages"] == trail["stages"]


def test_no_daemon_for_the_whole_run_then_a_daemon_starts(home: Path) -> None:
    stages = 50_000 if LONG else 5_000
    pipeline = start_pipeline(home, stages)
    run_id = run_id_of(pipeline)
    result = _finish(pipeline)
    assert result["shutdown_s"] < 2.0  # nobody waits for an absent daemon
    daemon = DaemonProcess(home).start()
    try:
        _exactly_once(daemon, home, run_id, stages, result, "no daemon, started afterwards")
    finally:
        daemon.stop()


def test_daemon_stopped_halfway_and_started_after_the_run(home: Path) -> None:
    stages = 60_000 if LONG else 10_000
    daemon = DaemonProcess(home).start()
    pipeline = start_pipeline(home, stages, pause_every=20)
    run_id = run_id_of(pipeline)
    wait_for(lambda: daemon.status().get("stats", {}).get("accepted", 0) > stages // 10)
    assert daemon.stop() == 0
    result = _finish(pipeline)
    daemon.start()
    try:
        _exactly_once(daemon, home, run_id, stages, result, "daemon stopped halfway")
    finally:
        daemon.stop()


def test_the_pipeline_killed_mid_run_keeps_what_it_recorded(daemon: DaemonProcess) -> None:
    pipeline = start_pipeline(daemon.home, 10_000_000, pause_every=100)
    run_id = run_id_of(pipeline)
    wait_for(lambda: daemon.status().get("stats", {}).get("accepted", 0) > 2_000)
    pipeline.kill()
    pipeline.wait(30)
    audit = wait_for(lambda: (a := daemon.audit(run_id, complete=False))["complete"] and a, 60)
    assert audit["status"] == "crashed"
    ended, crashed = audit["counts"]["ok"], audit["counts"]["crashed"]  # crashed: 1 if killed mid-stage
    counts = tally("pipeline killed mid-run", daemon.home, run_id, emitted=ended + crashed)
    counts.report(run_status=audit["status"], crashed_stages=crashed)
    assert counts.in_log == ended and counts.in_read_model == ended + crashed and crashed <= 1
    assert (counts.lost, counts.log_duplicates, counts.read_model_duplicates) == (0, 0, 0)


@pytest.mark.parametrize("damage", ["torn_tail", "flipped_bytes", "zero_tail", "missing_segment"])
def test_event_log_damage_is_recovered_counted_and_reported(home: Path, damage: str) -> None:
    from stagewatch.daemon.ingest._eventlog import EventLog

    # Small segments so a missing segment is one of several.
    log = EventLog(home / "events", segment_bytes=4096)
    log.open()
    payloads = [json.dumps({"n": i}).encode() * 4 for i in range(400)]
    for i in range(0, 400, 10):
        log.append(payloads[i : i + 10])
    log.close()
    segments = log.segments()
    last = segments[-1][1]
    if damage == "torn_tail":
        with open(last, "ab") as handle:
            handle.write(b"\x40\x00\x00\x00\x01\x02")
    elif damage == "zero_tail":
        with open(last, "ab") as handle:
            handle.write(b"\0" * 8192)
    elif damage == "flipped_bytes":
        middle = segments[len(segments) // 2][1]
        data = bytearray(middle.read_bytes())
        data[len(data) // 2] ^= 0xFF
        middle.write_bytes(bytes(data))
    else:
        segments[len(segments) // 2][1].unlink()
    daemon = DaemonProcess(home).start()
    try:
        recovery = wait_for(lambda: daemon.status().get("stats"), 30)["recovery"]
        found = {
            "torn_tail": recovery["truncated_bytes"] == 6,
            "zero_tail": recovery["truncated_bytes"] == 8192,
            "flipped_bytes": recovery["replay_corrupt_regions"] == 1,
            "missing_segment": len(recovery["missing_ranges"]) == 1,
        }
        assert found[damage], recovery
        intact = sum(1 for _ in EventLog(home / "events").read())
        expected = {"torn_tail": 400, "zero_tail": 400, "flipped_bytes": 399}.get(damage)
        assert expected is None or intact == expected
        print(f"\nFAULTS {json.dumps({'scenario': f'event log: {damage}', 'intact_records': intact, **recovery})}")
        assert "event log recovery" in daemon.log()  # said, not silent
    finally:
        daemon.stop()


def test_a_full_disk_refuses_writes_keeps_events_and_delivers_after_space_is_freed(small_disk: Path) -> None:
    stages = 3_000
    # The floor would stop the daemon before the disk is full; this scenario wants a real ENOSPC.
    daemon = DaemonProcess(small_disk, env={"STAGEWATCH_DISK_FLOOR_FREE_BYTES": "0"}).start()
    try:
        filler = fill_disk(small_disk)
        pipeline = start_pipeline(small_disk, stages, pause_every=10)
        run_id = run_id_of(pipeline)
        time.sleep(6)  # the daemon cannot log; the client cannot spool: events wait in memory
        assert "cannot write the event log" in daemon.log()
        filler.unlink()
        result = _finish(pipeline, timeout_s=120)
        _exactly_once(daemon, small_disk, run_id, stages, result, "disk full, then freed")
    finally:
        if daemon.process is not None:
            daemon.stop()


def test_a_flood_and_a_stalled_subscriber_neither_lose_events_nor_grow_memory(daemon: DaemonProcess) -> None:
    import multiprocessing as mp
    import sys

    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from flood import PeakRss, daemon_process, flood, stall_live_feed

    seconds, stages = (30.0, 30_000) if LONG else (6.0, 3_000)
    rss = PeakRss(daemon_process(daemon.home))
    context = mp.get_context("spawn")
    sent = context.Value("q", 0)
    workers = [context.Process(target=flood, args=(f"ipc://{daemon.socket_path}", seconds, sent)) for _ in range(2)]
    workers.append(context.Process(target=stall_live_feed, args=(daemon.home, seconds)))
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    accepted_before = daemon.status()["stats"]["accepted"]
    pipeline = start_pipeline(daemon.home, stages, pause_every=10)
    run_id = run_id_of(pipeline)
    result = _finish(pipeline)
    for worker in workers:
        worker.join(seconds + 30)
    _all_projected(daemon, run_id, stages, timeout_s=300)
    peak_mb = rss.stop()
    scenario = "flood (2 producers, no acks awaited) + stalled subscriber"
    _exactly_once(
        daemon,
        daemon.home,
        run_id,
        stages,
        result,
        scenario,
        flood_events_sent=sent.value,
        daemon_peak_rss_mb=round(peak_mb),
    )
    assert daemon.status()["stats"]["accepted"] > accepted_before + 10_000  # it kept ingesting the flood too
    assert peak_mb < 1024  # bounded: ZeroMQ's per-client queue, not the daemon's heap, absorbs the flood
