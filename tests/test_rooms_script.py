"""scripts/rooms.py, the move of the daemon's flat modules into rooms: run for real (git, files,
ruff) on this tree and on small trees made here."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "rooms.py"

PYPROJECT = """\
[tool.setuptools]
package-dir = { "stagewatch" = "client", "stagewatch.daemon" = "daemon" }
packages = ["stagewatch", "stagewatch.daemon"]

[tool.ruff]
line-length = 120

[tool.ruff.lint.isort]
known-first-party = ["stagewatch", "tests"]

# The rooms' import rules
[tool.importlinter]
root_packages = ["stagewatch"]

[[tool.importlinter.contracts]]
name = "old"
type = "forbidden"
source_modules = ["stagewatch.daemon._store"]
forbidden_modules = ["stagewatch.cli"]
"""

# The client's Home as it was: a path of the client's, two of the daemon's.
HOME = """\
\"\"\"The layout.\"\"\"

from pathlib import Path

PARTITION_PREFIX = "date="


class Home:
    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- folders -------------------------------------------------------------------------
    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    # -- tables --------------------------------------------------------------------------
    def table(self, name: str) -> Path:
        return self.root / "metrics" / name


def partition_date(folder: Path) -> str | None:
    return folder.name[len(PARTITION_PREFIX) :] if folder.name.startswith(PARTITION_PREFIX) else None


def ipc_path() -> None:
    pass
"""

# A flat daemon as it was: relative and absolute imports, a monkeypatch string, a doc's path.
FLAT = {
    "pyproject.toml": PYPROJECT,
    "client/__init__.py": "",
    "client/_home.py": HOME,
    "daemon/__init__.py": "from stagewatch.daemon._store import Store\n\n__all__ = ['Store']\n",
    "daemon/_layout.py": (
        '"""The layout of the daemon."""\n\nfrom stagewatch._home import PARTITION_PREFIX, Home, partition_date\n\n\n'
        "class DaemonHome(Home):\n    __slots__ = ()\n"
    ),
    "daemon/_store.py": "class Store:\n    pass\n",
    "daemon/_writer.py": (
        "from stagewatch._home import Home, ipc_path\n"
        "\n"
        "from ._store import Store\n"
        "\n"
        "\n"
        "def writer(home: Home) -> Store:\n"
        "    ipc_path()\n"
        "    return Store()\n"
    ),
    "tests/test_writer.py": (
        "from stagewatch.daemon import Store, _store\n"
        "\n"
        "\n"
        "def test_it(monkeypatch) -> None:\n"
        '    monkeypatch.setattr("stagewatch.daemon._writer.Store", Store)\n'
        "    assert _store\n"
    ),
    "ui/_data.py": "from stagewatch.daemon import (\n    Store,\n    _writer,  # the writer\n)\n",
    "docs/notes.md": "The store (`daemon/_store.py`, `stagewatch.daemon._store`) writes parts.\n",
}


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "tree"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "flat"], cwd=root, check=True)
    return root


def _rooms(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), *args], capture_output=True, text=True, timeout=120
    )


def _status(root: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout


def test_this_tree_is_in_its_rooms() -> None:
    """A module added flat to daemon/ (or one the mapping forgets) fails here, not on a rerun."""
    result = _rooms(ROOT, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to do" in result.stdout


def test_the_move_rewrites_every_reference_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    root = _tree(tmp_path, FLAT)
    (root / "daemon" / "_dedup.py").write_text("")  # not yet added to git: moved all the same
    result = _rooms(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (root / "daemon" / "_store.py").exists()
    assert (root / "daemon" / "ingest" / "_dedup.py").exists() and not (root / "daemon" / "_dedup.py").exists()
    assert (root / "daemon" / "tables" / "__init__.py").read_text().startswith('"""Writing what is read')
    writer = (root / "daemon" / "tables" / "_writer.py").read_text()
    assert "from stagewatch.daemon.tables._store import Store" in writer
    assert "from stagewatch.daemon.base._layout import DaemonHome" in writer
    assert "from stagewatch._home import ipc_path" in writer
    assert "def writer(home: DaemonHome) -> Store:" in writer
    layout = (root / "daemon" / "base" / "_layout.py").read_text()
    assert "class DaemonHome(Home):" in layout  # the layout itself builds on the client's Home
    for moved in ("def events(self)", "# -- tables", "def table(self, name: str)", "def partition_date(", "PARTITION_"):
        assert moved in layout
    home = (root / "client" / "_home.py").read_text()
    assert "def spool(self)" in home and "def ipc_path()" in home
    for moved in ("def events(", "def table(", "# -- tables", "partition_date", "PARTITION_PREFIX"):
        assert moved not in home
    test = (root / "tests" / "test_writer.py").read_text()
    assert "from stagewatch.daemon import Store\nfrom stagewatch.daemon.tables import _store\n" in test
    assert '"stagewatch.daemon.tables._writer.Store"' in test
    assert "look by hand: a comment inside this import is dropped" in result.stdout
    ui = (root / "ui" / "_data.py").read_text()
    assert ui == "from stagewatch.daemon import Store\nfrom stagewatch.daemon.tables import _writer\n"
    assert (root / "docs" / "notes.md").read_text() == (
        "The store (`daemon/tables/_store.py`, `stagewatch.daemon.tables._store`) writes parts.\n"
    )
    assert "from stagewatch.daemon.tables._store import Store" in (root / "daemon" / "__init__.py").read_text()
    pyproject = (root / "pyproject.toml").read_text()
    # the rooms that hold something: no empty room is made
    rooms = ["stagewatch.daemon.base", "stagewatch.daemon.ingest", "stagewatch.daemon.tables"]
    assert tomllib.loads(pyproject)["tool"]["setuptools"]["packages"] == ["stagewatch", "stagewatch.daemon", *rooms]
    assert not (root / "daemon" / "query").exists()
    assert 'name = "old"' not in pyproject and "A daemon room imports only the rooms below it" in pyproject
    assert "known-first-party" in pyproject  # what follows the contracts stays
    moved = _status(root)

    again = _rooms(root)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert _status(root) == moved


def test_a_module_with_no_room_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    root = _tree(tmp_path, {**FLAT, "daemon/_novel.py": "", "daemon/delta/__init__.py": ""})
    result = _rooms(root)
    assert result.returncode == 2
    assert "daemon/_novel.py" in result.stderr and "daemon/delta/ (a package)" in result.stderr
    assert _status(root) == ""


def test_a_module_both_flat_and_in_its_room_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path, {**FLAT, "daemon/tables/__init__.py": "", "daemon/tables/_store.py": ""})
    result = _rooms(root)
    assert result.returncode == 2
    assert "daemon/_store.py and daemon/tables/_store.py" in result.stderr
    assert _status(root) == ""


def test_check_says_what_would_move_and_changes_nothing(tmp_path: Path) -> None:
    root = _tree(tmp_path, FLAT)
    result = _rooms(root, "--check")
    assert result.returncode == 1
    assert "move      daemon/_store.py -> daemon/tables/_store.py" in result.stdout
    assert _status(root) == ""
