"""The contracts between the rooms, checked rather than written down: import rules (by
import-linter, over the package as it is installed), one owner for each side of the storage
layout, and classes a reader can hold in mind."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stagewatch import _home

ROOT = Path(__file__).parents[1]
PACKAGES = {"client": "stagewatch", "daemon": "stagewatch.daemon", "ui": "stagewatch.ui", "cli": "stagewatch.cli"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONTRACTS = {c["name"]: c for c in PYPROJECT["tool"]["importlinter"]["contracts"]}
# The daemon's rooms: its packages (daemon/{room}/), groundtruth/ among them.
DAEMON_ROOMS = sorted(p.parent.name for p in (ROOT / "daemon").glob("*/__init__.py"))


def _installed_layout(tmp_path: Path) -> Path:
    """The package as site-packages holds it (client/ is `stagewatch`, daemon/ is inside it,
    ...), built of links: import-linter reads the file tree, and an editable install maps
    the folders instead."""
    package = tmp_path / "stagewatch"
    package.mkdir()
    for path in (ROOT / "client").iterdir():
        (package / path.name).symlink_to(path)
    for folder in ("daemon", "ui", "cli"):
        (package / folder).symlink_to(ROOT / folder)
    return tmp_path


def _lint_imports(tmp_path: Path, config: Path) -> subprocess.CompletedProcess[str]:
    root = _installed_layout(tmp_path)
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()", str(config)]
    return subprocess.run(command, cwd=root, env={"PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120)


def test_the_rooms_keep_their_import_contracts(tmp_path: Path) -> None:
    result = _lint_imports(tmp_path, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(CONTRACTS)} kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("daemon/accuracy/_worker.py", "import stagewatch.cli", "The daemon imports neither the dashboard nor the CLI"),
        (
            "daemon/projection/_projection.py",
            "import stagewatch.daemon.tables._store",
            "The projection imports no room of the daemon's I/O",
        ),
        (
            "daemon/tables/_runindex.py",
            "import stagewatch.daemon.query._query",
            "The tables are written without the query room",
        ),
        (
            "daemon/query/_export.py",
            "import stagewatch.daemon.ingest._eventlog",
            "The query room imports neither ingest nor maintenance",
        ),
        (
            "ui/_trends.py",
            "import stagewatch.daemon.tables._writer",
            "The dashboard imports no room that writes",
        ),
        (
            "daemon/base/_stats.py",
            "import stagewatch.daemon.ingest._dedup",
            "A daemon room imports only the rooms below it",
        ),
    ],
)
def test_a_broken_contract_is_caught(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """The check can fail: one import against a rule breaks that contract."""
    sandbox = tmp_path / "tree"
    for room in PACKAGES:
        (sandbox / room).mkdir(parents=True)
        for path in (ROOT / room).rglob("*.py"):
            target = sandbox / room / path.relative_to(ROOT / room)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    with open(sandbox / module, "a") as handle:
        handle.write(f"\n{line}  # noqa\n")
    package = tmp_path / "installed" / "stagewatch"
    package.mkdir(parents=True)
    for path in (sandbox / "client").iterdir():
        (package / path.name).symlink_to(path)
    for folder in ("daemon", "ui", "cli"):
        (package / folder).symlink_to(sandbox / folder)
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]
    result = subprocess.run(
        [*command, str(ROOT / "pyproject.toml")],
        cwd=package.parent,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(package.parent)},
        timeout=120,
    )
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout


def test_the_contracts_name_every_client_module_and_daemon_room() -> None:
    """Module lists in the contracts (import-linter's wildcards take whole names only) stay complete."""
    client = {f"stagewatch.{p.stem}" for p in (ROOT / "client").glob("*.py") if p.stem != "__init__"}
    assert set(CONTRACTS["The client imports neither the daemon, the dashboard nor the CLI"]["source_modules"]) == {
        "stagewatch",
        *client,
    }
    layers = CONTRACTS["A daemon room imports only the rooms below it"]["layers"]
    layered = {name.strip() for layer in layers for name in layer.split("|")}
    assert set(DAEMON_ROOMS) - {"groundtruth"} <= layered
    assert {p.stem for p in (ROOT / "daemon").glob("_*.py")} - {"__init__", "_demo", "_street"} <= layered
    ground_truth = set(CONTRACTS["Ground truth imports nothing of the daemon"]["forbidden_modules"])
    assert {f"stagewatch.daemon.{room}" for room in DAEMON_ROOMS if room != "groundtruth"} <= ground_truth


def test_the_daemon_is_in_its_rooms() -> None:
    """What is left at daemon/'s top is the public API and what wires the rooms together
    (scripts/rooms.py moves the rest, and refuses a module it has no room for)."""
    assert sorted(p.name for p in (ROOT / "daemon").glob("*.py")) == [
        "__init__.py",
        "_daemon.py",
        "_demo.py",
        "_rebuild.py",
        "_street.py",
    ]


# Joining one of these names onto a path is the layout's business: only client/_home.py (the
# client's side) and daemon/base/_layout.py (the daemon's) do it.
LAYOUT_MODULES = (ROOT / "client" / "_home.py", ROOT / "daemon" / "base" / "_layout.py")
LAYOUT_NAMES = (
    "events",
    "runs",
    "metrics",
    "state",
    "index",
    "quarantine",
    "logs",
    "spool",
    "run",
    "keys",
    "datasets",
    "stages",
    "tables",
    "authorized",
    "clients",
    "audit.json",
    "stages.jsonl",
    "accuracy.json",
    "status.json",
    "daemon.lock",
    "checkpoint.msgpack",
    "accuracy.lock",
    "daemon.jsonl",
    "ingest.sock",
    "live.sock",
    "accuracy.sock",
    "server.key",
    "server.key_secret",
)
_NAMES = "|".join(map(re.escape, LAYOUT_NAMES))
JOINS = [
    re.compile(rf"""/\s*f?["']({_NAMES})["']"""),  # path / "runs"
    re.compile(rf"""f?["']({_NAMES})/"""),  # "runs/..." spelled out
    re.compile(r"""["']date="""),  # a partition's folder name
    re.compile(r"""["']ipc://"""),  # endpoint parsing
]


def _layout_joins(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if any(join.search(line) for join in JOINS)]


def test_no_module_but_the_layouts_joins_the_layout() -> None:
    offenders = {}
    for room in PACKAGES:
        for path in (ROOT / room).rglob("*.py"):
            if path in LAYOUT_MODULES:
                continue
            found = _layout_joins(path.read_text())
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


def test_the_layout_check_finds_a_join() -> None:
    assert _layout_joins('audit = home / "runs" / run_id / "audit.json"')
    assert _layout_joins('path = f"runs/{run_id}/stages/"')
    assert _layout_joins('folder.glob("date=*")')
    assert not _layout_joins("path = home.audit(run_id)")


def test_every_package_folder_is_installed() -> None:
    """A folder with an __init__.py that pyproject's `packages` forgets is missing from a
    non-editable install (the systemd one): the dashboard's pages once were."""

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {folder: package for package, folder in setuptools["package-dir"].items()}
    found = set()
    for folder, package in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([package, *relative]))
    assert found == set(setuptools["packages"])


def test_the_clients_home_keeps_only_what_the_client_writes_and_finds() -> None:
    """A run's folder and saved outputs, the spool, the sockets: the rest is DaemonHome's.
    (`_home.Home`, not an import of the name: scripts/rooms.py turns that into DaemonHome.)"""
    paths = {name for name in dir(_home.Home) if not name.startswith("_")}
    assert paths == {
        "of",
        "resolve",
        "root",
        "runs",
        "run",
        "stage_outputs",
        "artifact",
        "spool",
        "shared_folders",
        "sockets",
        "ingest_endpoint",
        "live_endpoint",
        "accuracy_endpoint",
    }


# A class longer than this is more than a reader holds in mind: split it by its jobs.
MAX_CLASS_LINES = 200


def _long_classes(text: str) -> dict[str, int]:
    classes = (node for node in ast.walk(ast.parse(text)) if isinstance(node, ast.ClassDef))
    lengths = {node.name: node.end_lineno - node.lineno + 1 for node in classes if node.end_lineno}
    return {name: lines for name, lines in lengths.items() if lines > MAX_CLASS_LINES}


def test_no_class_in_the_daemon_is_over_200_lines() -> None:
    found = {}
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        long = _long_classes(path.read_text())
        if long:
            found[str(path.relative_to(ROOT))] = long
    assert found == {}


def test_the_class_length_check_finds_a_long_class() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_CLASS_LINES))
    assert _long_classes(f"class Long:\n{body}") == {"Long": MAX_CLASS_LINES + 1}
    assert _long_classes(f"class Short:\n{body[: -len(body.splitlines()[-1]) - 1]}") == {}
