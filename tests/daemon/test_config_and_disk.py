"""Configuration (file, environment, flags, clear errors) and disk monitoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import stagewatch
from stagewatch.daemon.base._disk import FLOOR, OK, WARNING, DiskReading, disk_state
from stagewatch.daemon.base._settings import ConfigError, DiskSection, load_config
from tests.conftest import DaemonProcess, run_pipeline, sw, wait_for

GIB = 1024**3


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    file = tmp_path / "stagewatch.toml"
    file.write_text(
        'home = "/srv/sw"\n[daemon]\nclient_timeout_s = 30\nlog_level = "DEBUG"\n[disk]\nwarn_free_bytes = "2GB"\n'
    )
    config, sources = load_config(
        file, environ={"STAGEWATCH_DAEMON_LOG_LEVEL": "WARNING"}, flags={"daemon.client_timeout_s": 5.0}
    )
    assert (config.home, config.daemon.client_timeout_s, config.daemon.log_level) == ("/srv/sw", 5.0, "WARNING")
    assert config.disk.warn_free_bytes == 2_000_000_000 and config.daemon.flush_interval_s == 1.0
    assert sources["home"] == f"file {file}" and sources["daemon.client_timeout_s"] == "flag"
    assert sources["daemon.log_level"] == "environment" and sources["daemon.flush_interval_s"] == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon]\nclient_timout_s = 3\n", "daemon.client_timout_s (from file"),
        ("[daemon]\nclient_timeout_s = -1\n", "daemon.client_timeout_s (from file"),
        ('[disk]\nwarn_free_bytes = "lots"\n', "disk.warn_free_bytes"),
        ("[daemon\n", "not valid TOML"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(file, environ={})


def test_the_daemon_refuses_a_bad_configuration_with_exit_2(home: Path) -> None:
    result = sw("daemon", "--home", str(home), env={"STAGEWATCH_DAEMON_FLUSH_INTERVAL_S": "soon"})
    assert result.returncode == 2 and "daemon.flush_interval_s (from environment)" in result.stderr
    assert not (home / "run" / "ingest.sock").exists()  # nothing half-started


def test_config_show_prints_values_and_sources(home: Path) -> None:
    result = sw("config", "show", "--home", str(home), "--json", env={"STAGEWATCH_DAEMON_CLIENT_TIMEOUT_S": "7"})
    shown = json.loads(result.stdout)
    assert shown["daemon.client_timeout_s"] == {"value": 7.0, "source": "environment"}
    assert shown["home"]["source"] == "flag" and shown["disk.floor_free_bytes"]["source"] == "default"


LIMITS = DiskSection(warn_free_percent=10, warn_free_bytes=5 * GIB, floor_free_bytes=GIB // 4, max_home_bytes=50 * GIB)


@pytest.mark.parametrize(
    ("free", "home_bytes", "state"),
    [
        (500 * GIB, 1 * GIB, OK),
        (40 * GIB, 1 * GIB, WARNING),  # 4% free of 1 TiB
        (500 * GIB, 60 * GIB, WARNING),  # the home is too big
        (GIB // 8, 1 * GIB, FLOOR),
    ],
)
def test_disk_state_from_a_reading(free: int, home_bytes: int, state: str) -> None:
    assert disk_state(DiskReading(free, 1024 * GIB, home_bytes), LIMITS)[0] == state


def test_below_the_floor_the_daemon_accepts_nothing_and_doctor_says_so(home: Path) -> None:
    env = {"STAGEWATCH_DISK_FLOOR_FREE_BYTES": str(2**60)}  # more than any disk has free
    daemon = DaemonProcess(home)
    daemon.process = subprocess.Popen(
        [sys.executable, "-m", "stagewatch.cli", "daemon", "--home", str(home)],
        env={**os.environ, **env},
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: daemon.status().get("disk", {}).get("state") == FLOOR)
        run = stagewatch.init(pipeline="p", home=home)
        with run.stage("s"):
            pass
        run.finish()
        assert not run.flush(2)  # unacknowledged: the events stay with the client
        assert daemon.status()["stats"]["accepted"] == 0
        doctor = sw("doctor", "--home", str(home), "--json", env=env)
        assert doctor.returncode == 1
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert not checks["disk"]["ok"] and "below the floor" in checks["disk"]["detail"]
        assert checks["daemon"]["ok"]
    finally:
        daemon.stop()


def test_doctor_on_a_healthy_home(daemon: DaemonProcess) -> None:
    wait_for(lambda: daemon.status().get("disk"))
    result = sw(
        "doctor",
        "--home",
        str(daemon.home),
        env={"STAGEWATCH_DISK_WARN_FREE_BYTES": "1", "STAGEWATCH_DISK_WARN_FREE_PERCENT": "0"},
    )
    assert result.returncode == 0, result.stdout
    assert "running, pid" in result.stdout


def test_doctor_without_a_daemon_is_healthy_until_events_wait_for_one(home: Path) -> None:
    at_rest = sw("doctor", "--home", str(home))
    assert at_rest.returncode == 0 and "not running on" in at_rest.stdout, at_rest.stdout
    run_pipeline(home, wait_for_daemon=False)  # no daemon: the pipeline spools its events
    waiting = sw("doctor", "--home", str(home), "--json")
    checks = {c["name"]: c for c in json.loads(waiting.stdout)["checks"]}
    assert waiting.returncode == 1 and checks["daemon"]["ok"], waiting.stdout
    assert not checks["spool"]["ok"] and "no daemon runs to take them" in checks["spool"]["detail"]


def test_every_key_is_documented() -> None:
    from stagewatch.daemon.base._settings import describe_keys

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    missing = [key for key, _, _ in describe_keys() if f"`{key}`" not in doc]
    assert missing == []
