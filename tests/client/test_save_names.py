"""A saved output is never overwritten: a save whose name an earlier save of the run took is
written under a free name made from it (the sample id, else a counter), said once in the log."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import stagewatch
from stagewatch.daemon.query._readmodels import read_table
from tests.conftest import DaemonProcess, run_python, sw, wait_for


def _frame(index: int) -> np.ndarray:
    """A picture of its own per frame: its width and its pixels say which frame saved it."""
    return np.full((8, 8 + index, 3), index * 10, np.uint8)


def _stage_folder(home: Path, run_id: str, stage: str = "detection") -> Path:
    return home / "runs" / run_id / "stages" / stage


def _files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())  # temporaries included: none may stay behind


def test_twenty_frames_saving_one_name_leave_twenty_files_each_linked_to_its_frame(daemon: DaemonProcess) -> None:
    """The README's loop as a new user wrote it: `st.save("overlay.png", ...)` per frame. Each
    frame's pixels are kept, and the trail links each execution to its own file."""
    run = stagewatch.init(pipeline="perception", home=daemon.home)
    returned = {}
    for index in range(20):
        sample = f"frame_{index:03d}"
        with run.stage("detection", input_path=f"/data/{sample}.png", sample_id=sample) as stage:
            returned[sample] = stage.save("overlay.png", _frame(index))
    run.finish()
    assert run.flush(10)

    prefix = f"runs/{run.id}/stages/detection/"
    assert returned["frame_000"] == prefix + "overlay.png"
    assert returned["frame_007"] == prefix + "overlay.frame_007.png"
    assert _files(_stage_folder(daemon.home, run.id)) == sorted(Path(path).name for path in returned.values())
    for index, (sample, path) in enumerate(returned.items()):
        np.testing.assert_array_equal(np.asarray(Image.open(daemon.home / path)), _frame(index), err_msg=sample)

    daemon.audit(run.id)
    shown = sw("show", run.id, "--home", str(daemon.home), "--json", "--all")
    assert shown.returncode == 0, shown.stderr
    stages = json.loads(shown.stdout)["stages"]
    assert len(stages) == 20
    for stage in stages:
        (artifact,) = stage["artifacts"]
        assert artifact["path"] == returned[stage["sample_id"]] and stage["output_paths"] == [artifact["path"]]
        assert artifact["bytes"] == (daemon.home / artifact["path"]).stat().st_size

    def all_rows() -> list[dict] | None:
        found = [r for r in read_table(daemon.home, "stage_executions").to_pylist() if r["run_id"] == run.id]
        return found if len(found) == 20 else None

    rows = wait_for(all_rows)
    assert {row["sample_id"]: list(row["output_paths"]) for row in rows} == {s: [p] for s, p in returned.items()}


def test_the_rename_is_said_once_per_stage_and_name(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = stagewatch.init(pipeline="perception", home=home)
    with caplog.at_level(logging.WARNING, logger="stagewatch"):
        for index in range(20):
            with run.stage("detection", sample_id=f"frame_{index:03d}") as stage:
                stage.save("overlay.png", _frame(index))
                stage.save("boxes.json", {"frame": index})
            with run.stage("tracking", sample_id=f"frame_{index:03d}") as stage:
                stage.save("overlay.png", _frame(index))
    said = [record.getMessage() for record in caplog.records if "again" in record.getMessage()]
    assert said == [
        "stagewatch: detection saved overlay.png again (an earlier execution saved it): saved as "
        "overlay.frame_001.png; put the sample in the name to choose it",
        "stagewatch: detection saved boxes.json again (an earlier execution saved it): saved as "
        "boxes.frame_001.json; put the sample in the name to choose it",
        "stagewatch: tracking saved overlay.png again (an earlier execution saved it): saved as "
        "overlay.frame_001.png; put the sample in the name to choose it",
    ]


def test_where_the_sample_cannot_tell_saves_apart_a_counter_does(home: Path) -> None:
    """No sample id; a sample id already used; one that is no file name as given; a name that
    already holds the sample; the same name twice in one execution: nothing is replaced."""
    run = stagewatch.init(pipeline="perception", home=home)
    names = []
    for sample in (None, None, None, "f1", "f1", "cam 0/frame:7"):
        with run.stage("detection", sample_id=sample) as stage:
            names.append(Path(stage.save("overlay.png", np.zeros((2, 2), np.uint8))).name)
    assert names == [
        "overlay.png",
        "overlay.2.png",
        "overlay.3.png",
        "overlay.f1.png",
        "overlay.4.png",
        "overlay.cam_0_frame_7.png",
    ]
    with run.stage("detection", sample_id="f2") as stage:
        first = stage.save("f2.pred.npy", np.array([1]))
        second = stage.save("f2.pred.npy", np.array([2]))
        assert stage.outputs == [first, second]
    assert [Path(first).name, Path(second).name] == ["f2.pred.npy", "f2.pred.2.npy"]
    assert np.load(home / first).tolist() == [1] and np.load(home / second).tolist() == [2]
    assert len(_files(_stage_folder(home, run.id))) == 8


@given(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,122}", fullmatch=True),
    st.sampled_from([".png", ".ply", ".npy", ".json"]),
    st.one_of(st.none(), st.text(max_size=300)),
)
def test_every_other_name_is_a_valid_distinct_file_name_with_the_extension(
    stem: str, extension: str, sample: str | None
) -> None:
    from stagewatch._names import counted_name, is_name, sample_name

    filename = stem + extension
    counted = [counted_name(filename, counter) for counter in range(2, 52)]
    assert len(set(counted)) == 50  # (a sample id of digits may name what a counter does: link(2) tells them apart)
    names = [name for name in (sample_name(filename, sample), *counted) if name is not None]
    assert filename not in names
    assert all(is_name(name) and name.endswith(extension) for name in names), names


def test_write_artifact_never_writes_over_a_file(tmp_path: Path) -> None:
    from stagewatch._saver import write_artifact

    assert write_artifact(tmp_path / "a.npy", np.array([1])).name == "a.npy"
    assert write_artifact(tmp_path / "a.npy", np.array([2]), iter(["a.npy", "b.npy"])).name == "b.npy"
    with pytest.raises(FileExistsError):
        write_artifact(tmp_path / "a.npy", np.array([3]))
    assert [np.load(tmp_path / name).tolist() for name in _files(tmp_path)] == [[1], [2]]


def test_a_forked_pool_saving_one_name_loses_nothing(daemon: DaemonProcess) -> None:
    """Three worker processes save "overlay.npy" into one run, sample ids repeating: every save
    gets a file of its own, whichever process reaches a name first."""
    code = f"""
import json, multiprocessing as mp, numpy as np, stagewatch
def work(i):
    with stagewatch.stage("detection", sample_id=f"w{{i % 3}}") as stage:
        return stage.save("overlay.npy", np.full(1000, i))
if __name__ == "__main__":
    run = stagewatch.init(pipeline="forking", home={str(daemon.home)!r})
    with mp.get_context("fork").Pool(3) as pool:
        paths = pool.map(work, range(60), chunksize=1)
    print(json.dumps({{"run": run.id, "paths": paths}}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout.splitlines()[-1])
    run_id, paths = shown["run"], shown["paths"]
    assert None not in paths and len(set(paths)) == 60
    assert [int(np.load(daemon.home / path)[0]) for path in paths] == list(range(60))
    assert len(_files(_stage_folder(daemon.home, run_id))) == 60

    def all_arrived() -> list[dict] | None:
        stages = daemon.audit(run_id)["stages"]
        return stages if len(stages) == 60 else None

    for stage in wait_for(all_arrived):
        (artifact,) = stage["artifacts"]
        saved = int(np.load(daemon.home / artifact["path"])[0])
        assert stage["sample_id"] == f"w{saved % 3}" and paths[saved] == artifact["path"]


def test_threads_saving_one_name_at_once_lose_nothing(home: Path) -> None:
    run = stagewatch.init(pipeline="threads", home=home)

    def work(index: int) -> str | None:
        with run.stage("detection") as stage:
            return stage.save("overlay.npy", np.full(100_000, index))

    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(work, range(40)))
    assert None not in paths and len(set(paths)) == 40
    assert [int(np.load(home / path)[0]) for path in paths] == list(range(40))
    assert len(_files(_stage_folder(home, run.id))) == 40


@pytest.fixture
def read_only_stage_folder(home: Path) -> Iterator[tuple[stagewatch.Run, Path]]:
    """A run whose detection folder holds overlay.png and then turns read-only (a tmpfs
    remounted ro: root, as CI runs, writes through a folder's mode bits)."""
    if os.geteuid() != 0:
        pytest.fail("the read-only folder is a tmpfs remounted read-only and needs root (CI runs as root)")
    run = stagewatch.init(pipeline="readonly", home=home)
    folder = _stage_folder(home, run.id)
    folder.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    try:
        with run.stage("detection", sample_id="f0") as stage:
            assert stage.save("overlay.png", _frame(0)) is not None
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield run, folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_read_only_stage_folder_never_raises_into_the_pipeline(read_only_stage_folder) -> None:
    run, folder = read_only_stage_folder
    with run.stage("detection", sample_id="f1") as stage:
        assert stage.save("overlay.png", _frame(1)) is None  # the name is taken, and nothing can be written
        assert stage.save("other.png", _frame(1)) is None
        assert stage.outputs == []
    assert _files(folder) == ["overlay.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "overlay.png")), _frame(0))


def test_a_link_the_disk_refuses_never_raises_and_leaves_no_temporary(home: Path, monkeypatch) -> None:
    """A full disk can refuse the directory entry the link adds, after the data was written."""
    run = stagewatch.init(pipeline="full", home=home)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with run.stage("detection", sample_id="f0") as stage:
        monkeypatch.setattr(os, "link", full)
        assert stage.save("overlay.png", _frame(0)) is None
    assert _files(_stage_folder(home, run.id)) == []


def test_a_file_system_without_hard_links_still_keeps_every_save(home: Path, monkeypatch) -> None:
    """FAT, exFAT and some network shares refuse link(2) (EPERM): each save still gets a name
    of its own, reserved with O_EXCL, and the data goes in by rename."""
    run = stagewatch.init(pipeline="fat", home=home)

    def no_links(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    paths = []
    for index in range(3):
        with run.stage("detection", sample_id=f"frame_{index:03d}") as stage:
            paths.append(stage.save("overlay.png", _frame(index)))
    assert [Path(path).name for path in paths] == ["overlay.png", "overlay.frame_001.png", "overlay.frame_002.png"]
    for index, path in enumerate(paths):
        np.testing.assert_array_equal(np.asarray(Image.open(home / path)), _frame(index))
    assert len(_files(_stage_folder(home, run.id))) == 3
