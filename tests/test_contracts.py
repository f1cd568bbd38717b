"""The contracts between the rooms, checked rather than written down: import rules (by
import-linter, over the package as it is installed) and one owner for the storage layout."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
ROOMS = {"client": "stagewatch", "daemon": "stagewatch.daemon", "ui": "stagewatch.ui", "cli": "stagewatch.cli"}


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
    assert "5 kept, 0 broken" in result.stdout


def test_a_broken_contract_is_caught(tmp_path: Path) -> None:
    """The check can fail: a daemon module that imports the CLI breaks a contract."""
    sandbox = tmp_path / "tree"
    for room in ROOMS:
        (sandbox / room).mkdir(parents=True)
        for path in (ROOT / room).rglob("*.py"):
            target = sandbox / room / path.relative_to(ROOT / room)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    with open(sandbox / "daemon" / "_worker.py", "a") as handle:
        handle.write("\nimport stagewatch.cli  # noqa\n")
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
    assert "The daemon imports neither the dashboard nor the CLI BROKEN" in result.stdout


def test_the_contracts_name_every_client_and_daemon_module() -> None:
    """Module lists in the contracts (import-linter's wildcards take whole names only) stay complete."""
    contracts = {
        c["name"]: c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    }
    client = {f"stagewatch.{p.stem}" for p in (ROOT / "client").glob("*.py") if p.stem != "__init__"}
    assert set(contracts["The client imports neither the daemon, the dashboard nor the CLI"]["source_modules"]) == {
        "stagewatch",
        *client,
    }
    daemon = {f"stagewatch.daemon.{p.stem}" for p in (ROOT / "daemon").glob("_*.py") if p.stem != "__init__"}
    assert daemon <= set(contracts["Ground truth imports nothing of the daemon but the protocol"]["forbidden_modules"])


# Joining one of these names onto a path is the layout's business: only client/_home.py does it.
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


def test_no_module_but_home_joins_the_layout() -> None:
    offenders = {}
    for room in ROOMS:
        for path in (ROOT / room).rglob("*.py"):
            if path == ROOT / "client" / "_home.py":
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
