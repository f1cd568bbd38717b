import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagewatch._home import artifact_relpath
from stagewatch._names import check_name, check_run_id, is_name

HOSTILE = ["../../etc", "..", ".", "/etc/passwd", "a/b", "a\x00b", "", " x", "x" * 129, "-rf", "a\\b", "é"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="expected stage name"):
        check_name(name, "stage name")


@given(st.text(max_size=200))
def test_an_accepted_name_is_one_plain_path_component(name: str) -> None:
    if is_name(name):
        assert "/" not in name and "\x00" not in name and name not in (".", "..") and not name.startswith(".")


def test_run_ids_must_be_canonical_uuids() -> None:
    run_id = str(uuid.uuid4())
    assert check_run_id(run_id) == run_id
    for bad in ["../x", run_id.upper(), run_id.replace("-", ""), "not-a-uuid"]:
        with pytest.raises(ValueError, match="run id"):
            check_run_id(bad)
    with pytest.raises(TypeError, match="expected run id as str"):
        check_run_id(42)


def test_artifact_paths_stay_under_the_run() -> None:
    run_id = str(uuid.uuid4())
    assert artifact_relpath(run_id, "detection", "overlay.png") == f"runs/{run_id}/stages/detection/overlay.png"
    with pytest.raises(ValueError):
        artifact_relpath(run_id, "detection", "../../../etc/passwd")
