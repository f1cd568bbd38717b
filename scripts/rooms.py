"""Move the daemon's flat modules into rooms (issue 30, item 6), on whatever tree it is run in.

    python scripts/rooms.py            # in the repository root (or --root PATH)
    python scripts/rooms.py --check    # say what it would do; change nothing (exit 1 if anything)

What it does, in order, and only what is still to do (a second run changes nothing):
1. Refuses, before touching anything, a tree it does not know: a module or package in daemon/
   that `MAPPING`, `STAYS` and `ROOMS` do not name (a new one: add it to the mapping and run
   again), or a module found both flat and in a room.
2. Turns relative imports inside daemon/ into absolute ones (so that moving a file keeps them).
3. Creates each room's package (`daemon/{room}/__init__.py`, a docstring saying its job) and
   `git mv`s each flat module into its room.
4. Rewrites every reference in the repository's text files (tracked and untracked, not
   ignored): `stagewatch.daemon._x` → `stagewatch.daemon.{room}._x` (imports, monkeypatch
   strings, `-m` command lines, docs), `daemon/_x.py` → `daemon/{room}/_x.py`, and
   `from stagewatch.daemon import _x` → `from stagewatch.daemon.{room} import _x` (one import
   per room; public names stay in `from stagewatch.daemon import ...`).
5. Outside client/, the daemon's side of the home: `Home` from `stagewatch._home` becomes
   `DaemonHome` from the base room's `_layout` (with `partition_date`, `PARTITION_PREFIX`): the
   client's `Home` keeps what the client writes and finds; the daemon's layout is the daemon's.
6. pyproject.toml: the rooms join `[tool.setuptools] packages`, and the `[tool.importlinter]`
   section is written from `contracts_toml()` (the rooms' import rules; the client's module
   list is read from client/).
7. `ruff check --select I --fix` and `ruff format` on the Python files it changed (moved paths
   sort differently and some import lines grow past the line length).

It stages the moves (`git mv`) and leaves the rest for you to review and commit.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# The rooms, bottom to top: a room may import the rooms listed before it (the layers contract
# below), never one after it.
ROOMS: dict[str, str] = {
    "base": (
        "What every room stands on, importing no other room: the daemon's layout of the home\n"
        "(`DaemonHome`), its settings and disk readings, the derived state files and how a damaged\n"
        "one is set aside, the home lock, logging, counters, the cost throttle, systemd notification."
    ),
    "projection": (
        "The pure fold: the event models (msgspec structs, validated in one native pass), each\n"
        "table's row defined once, and `Projector.apply(event, lsn)` over typed run state. No I/O,\n"
        "no other room but base."
    ),
    "ingest": (
        "Taking events in: bind, receive, decode and validate, de-duplicate, append to the event\n"
        "log and fsync, acknowledge, quarantine what is rejected; spool ingestion; the live feed."
    ),
    "tables": (
        "Writing what is read: the read-model writer and its disk thread (rows, audit trails,\n"
        "checkpoint, status), the store of the tables, compaction, retention, the run index."
    ),
    "query": (
        "Reading the tables: the DuckDB layer over the snapshot's files, the query API, the read\n"
        "models (runs, audit trails, accuracy), export."
    ),
    "compare": (
        "Comparing runs: a run against another or against a baseline of several, regressions\n"
        "judged against a pipeline's own history, and the statistical tests they use."
    ),
    "maintenance": "Upkeep while the daemon runs: the scheduler, liveness, disk checks, scrubbing, `doctor`.",
    "accuracy": (
        "The accuracy worker: a child process that tails the event log and judges sample results\n"
        "against ground truth into `samples` rows and accuracy.json."
    ),
}

# Flat module of daemon/ → its room.
MAPPING: dict[str, str] = {
    "_layout": "base",
    "_derived": "base",
    "_settings": "base",
    "_disk": "base",
    "_lock": "base",
    "_logging": "base",
    "_stats": "base",
    "_throttle": "base",
    "_sdnotify": "base",
    "_projection": "projection",
    "_gaps": "query",  # the time outside stages, in SQL
    "_exemplars": "query",  # the executions behind a percentile, in SQL
    "_outcomes": "projection",  # how a run ended, in words: the fold decides it, the UI and CLI say it
    "_schema": "projection",
    "_rows": "projection",
    "_ingest": "ingest",
    "_sockets": "ingest",
    "_decode": "ingest",
    "_dedup": "ingest",
    "_eventlog": "ingest",
    "_quarantine": "ingest",
    "_writer": "tables",
    "_diskjobs": "tables",
    "_store": "tables",
    "_compaction": "tables",
    "_retention": "tables",
    "_runindex": "tables",
    "_tables": "tables",
    "_sql": "query",
    "_query": "query",
    "_readmodels": "query",
    "_export": "query",
    "_compare": "compare",
    "_shifts": "compare",
    "_stattests": "compare",
    "_maintenance": "maintenance",
    "_scrub": "maintenance",
    "_doctor": "maintenance",
    "_accuracy": "accuracy",
    "_worker": "accuracy",
}
# What stays at daemon/'s top: the public API, the two ways of running the rooms (live and
# replayed from the log), the demo pipeline.
STAYS = frozenset({"__init__", "_daemon", "_rebuild", "_demo", "_street"})
# Packages of daemon/ that are no room of this script's making.
OTHER_PACKAGES = frozenset({"groundtruth"})

LAYOUT_MODULE = "stagewatch.daemon.base._layout"
# Names of client/_home.py that are the daemon's layout (new name).
LAYOUT_NAMES = {"Home": "DaemonHome", "partition_date": "partition_date", "PARTITION_PREFIX": "PARTITION_PREFIX"}

# What the client's `Home` keeps (a run's folder and outputs, the spool, the sockets); its other
# paths are the daemon's and move into `DaemonHome`, with these module-level names.
CLIENT_PATHS = frozenset(
    {"__init__", "of", "resolve", "__repr__", "__eq__", "__hash__", "runs", "run", "stage_outputs", "artifact"}
    | {"spool", "shared_folders", "sockets", "ingest_endpoint", "live_endpoint", "accuracy_endpoint"}
)
LAYOUT_CONSTANTS = ("PARTITION_PREFIX",)
LAYOUT_FUNCTIONS = ("partition_date",)
CLIENT_HOME_DOC = '''"""What the client writes and finds in a stagewatch home, and where client and daemon meet.

`Home` owns the client's side of the layout: a run's folder and its saved outputs, the
spool, the sockets and their endpoints. Both sides resolve the home and the endpoint the
same way, so a pipeline and a daemon started in the same environment find each other with
no configuration at all. The daemon's side of the layout (event log, tables, state, index,
quarantine, logs, keys, audit trails) is `DaemonHome` (daemon/base/_layout.py), a Home with
the daemon's paths; no other module joins the layout's names.

    runs/{run_id}/stages/{stage}/{file}       saved stage outputs
    spool/                                    events kept while no daemon answered
    run/                                      the sockets (ingest, live, accuracy)
"""
'''
SECTION = re.compile(r"^    # -- (?P<title>.+?) -+\s*$")

# This script and its test spell the flat names on purpose.
NOT_REWRITTEN = frozenset({"scripts/rooms.py", "tests/test_rooms_script.py"})
# Files never read for references (every other listed file is, if it is UTF-8 text).
BINARY_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".npy", ".npz", ".parquet", ".msgpack", ".gz", ".zip", ".ply"}
)
MAX_TEXT_BYTES = 8 * 1024 * 1024
MODULE = r"_[A-Za-z0-9_]+"
DOTTED = re.compile(rf"\bstagewatch\.daemon\.({MODULE})\b")
FILE_PATH = re.compile(rf"(?<![\w.])daemon/({MODULE})\b")
FROM_PACKAGE = re.compile(
    r"^(?P<indent>[ \t]*)from stagewatch\.daemon import (?P<names>\([^)]*\)|[^(\n]+)$", re.MULTILINE
)
RELATIVE = re.compile(r"^(?P<indent>[ \t]*)from (?P<dots>\.+)(?P<rest>[\w.]*) import ", re.MULTILINE)
HOME_IMPORT = re.compile(r"^(?P<indent>[ \t]*)from stagewatch\._home import (?P<names>\([^)]*\)|[^\n]+)$", re.MULTILINE)


class Refused(Exception):
    """The tree is not one this script knows how to move; nothing was changed."""


# -- the import contracts --------------------------------------------------------------------------


def _toml_list(values: list[str], indent: str = "    ") -> str:
    return "[\n" + "".join(f'{indent}"{value}",\n' for value in values) + "]"


def _contract(name: str, kind: str, **fields: object) -> str:
    lines = ["[[tool.importlinter.contracts]]", f'name = "{name}"', f'type = "{kind}"']
    for key, value in fields.items():
        if isinstance(value, list):
            lines.append(f"{key} = {_toml_list(value)}")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines)


def _room(name: str) -> str:
    return f"stagewatch.daemon.{name}"


# Imports the rules below let pass: reads of the tables from inside the tables room, through
# the query room's DuckDB layer (compaction's damage check and retention's choice of expired
# runs, both gone with the Delta Lake storage of issue 30; the run index built from a home
# written before it, which that storage brings). An entry that no longer matches is not an
# error (`unmatched_ignore_imports_alerting = "none"`).
STORAGE_EXCEPTIONS = [
    "stagewatch.daemon.tables._compaction -> stagewatch.daemon.query._sql",
    "stagewatch.daemon.tables._retention -> stagewatch.daemon.query._readmodels",
    "stagewatch.daemon.tables._runindex -> stagewatch.daemon.query._sql",
]
# Settings check a retention age with retention's own parser.
SETTINGS_EXCEPTION = "stagewatch.daemon.base._settings -> stagewatch.daemon.tables._retention"
# The dashboard names the runs table and looks a run's dates up in the run index.
UI_EXCEPTIONS = [
    "stagewatch.ui._data -> stagewatch.daemon.tables._store",
    "stagewatch.ui._live -> stagewatch.daemon.tables._runindex",
]


# The layers of the daemon, top to bottom; rooms of one layer import none of each other.
LAYERS = [["_rebuild"], ["_daemon"], ["maintenance", "accuracy", "compare"], ["query"], ["tables"], ["ingest"]]
LAYERS += [["projection"], ["base"]]


def contracts_toml(client_modules: list[str], present: list[str]) -> str:
    """The `[tool.importlinter]` section: who may import whom, over the rooms `present` (a
    contract naming a module that does not exist is an error to import-linter)."""
    rooms = [room for room in ROOMS if room in present]
    all_rooms = [_room(room) for room in rooms]
    top = [f"stagewatch.daemon.{name}" for name in ("_daemon", "_rebuild", "_demo", "_street")]

    def some(*names: str) -> list[str]:
        return [_room(name) for name in names if name in present]

    layers = [" | ".join(n for n in layer if n in present or n.startswith("_")) for layer in LAYERS]
    contracts = [
        _contract(
            "The client imports neither the daemon, the dashboard nor the CLI",
            "forbidden",
            source_modules=["stagewatch", *client_modules],
            forbidden_modules=["stagewatch.daemon", "stagewatch.ui", "stagewatch.cli"],
        ),
        _contract(
            "The daemon imports neither the dashboard nor the CLI",
            "forbidden",
            source_modules=["stagewatch.daemon"],
            forbidden_modules=["stagewatch.ui", "stagewatch.cli"],
        ),
        _contract(
            "The dashboard imports no CLI",
            "forbidden",
            source_modules=["stagewatch.ui"],
            forbidden_modules=["stagewatch.cli"],
        ),
        _contract(
            "A daemon room imports only the rooms below it",
            "layers",
            containers=["stagewatch.daemon"],
            layers=[layer for layer in layers if layer],
            ignore_imports=[*STORAGE_EXCEPTIONS, SETTINGS_EXCEPTION],
            unmatched_ignore_imports_alerting="none",
        ),
        _contract(
            "The projection imports no room of the daemon's I/O",
            "forbidden",
            source_modules=[_room("projection")],
            forbidden_modules=[_room(room) for room in rooms if room not in ("projection", "base")],
        ),
        _contract(
            "The query room imports neither ingest nor maintenance",
            "forbidden",
            source_modules=[_room("query")],
            forbidden_modules=[*some("ingest", "maintenance", "accuracy", "compare"), *top],
            allow_indirect_imports=True,
        ),
        _contract(
            "The tables are written without the query room",
            "forbidden",
            source_modules=[_room("tables")],
            forbidden_modules=[*some("query", "maintenance", "accuracy", "compare"), *top],
            ignore_imports=STORAGE_EXCEPTIONS,
            unmatched_ignore_imports_alerting="none",
            allow_indirect_imports=True,
        ),
        _contract(
            "The dashboard imports no room that writes",
            "forbidden",
            source_modules=["stagewatch.ui"],
            forbidden_modules=[*some("ingest", "tables", "maintenance", "accuracy"), *top],
            ignore_imports=UI_EXCEPTIONS,
            unmatched_ignore_imports_alerting="none",
            allow_indirect_imports=True,
        ),
        _contract(
            "Ground truth imports nothing of the daemon",
            "forbidden",
            source_modules=["stagewatch.daemon.groundtruth"],
            forbidden_modules=[*all_rooms, *top, "stagewatch.ui", "stagewatch.cli"],
        ),
        _contract(
            "No import cycles between sibling modules",
            "acyclic_siblings",
            ancestors=["stagewatch"],
            ignore_imports=[*STORAGE_EXCEPTIONS, SETTINGS_EXCEPTION],
            unmatched_ignore_imports_alerting="none",
        ),
    ]
    header = (
        "# The rooms' import rules (tests/test_contracts.py runs lint-imports; so can you). Written by\n"
        "# scripts/rooms.py (`contracts_toml`): change them there, or here once the move is done.\n"
        "[tool.importlinter]\n"
        'root_packages = ["stagewatch"]\n'
    )
    return header + "".join(f"\n{contract}\n" for contract in contracts)


# -- the tree --------------------------------------------------------------------------------------


@dataclass
class Plan:
    root: Path
    moves: list[tuple[Path, Path]] = field(default_factory=list)
    new_rooms: list[str] = field(default_factory=list)
    changed: dict[Path, str] = field(default_factory=dict)  # path (after the moves) → new text

    @property
    def daemon(self) -> Path:
        return self.root / "daemon"

    def rooms_after(self) -> list[str]:
        """The rooms the daemon has once the moves are done (a room with nothing to hold is not made)."""
        return [room for room in ROOMS if room in self.new_rooms or (self.daemon / room / "__init__.py").exists()]


def survey(root: Path) -> Plan:
    """What is to move; Refused for anything the mapping does not cover."""
    daemon = root / "daemon"
    if subprocess.run(["git", "rev-parse"], cwd=root, capture_output=True).returncode != 0 or not daemon.is_dir():
        raise Refused(f"{root} is not a stagewatch repository (a git tree with a daemon/ folder)")
    unknown, both = [], []
    plan = Plan(root)
    for path in sorted(daemon.iterdir()):
        if path.name.startswith(".") or path.name == "__pycache__":
            continue
        if path.is_dir():
            if path.name not in ROOMS and path.name not in OTHER_PACKAGES:
                unknown.append(f"daemon/{path.name}/ (a package)")
            continue
        if path.suffix != ".py":
            continue
        name = path.stem
        if name in STAYS:
            continue
        if name not in MAPPING:
            unknown.append(f"daemon/{path.name}")
            continue
        target = daemon / MAPPING[name] / path.name
        if target.exists():
            both.append(f"daemon/{path.name} and {target.relative_to(root)}")
        plan.moves.append((path, target))
    for room in ROOMS:
        for path in sorted((daemon / room).glob("*.py")) if (daemon / room).is_dir() else []:
            if path.stem != "__init__" and path.stem not in MAPPING:
                print(f"note: daemon/{room}/{path.name} is in room {room!r} and in no mapping (left where it is)")
    if "_layout" not in MAPPING or not any((daemon / p).exists() for p in ("_layout.py", "base/_layout.py")):
        raise Refused("daemon/_layout.py (DaemonHome, from the rooms branch) is missing: apply that commit first")
    problems = []
    if unknown:
        problems.append(
            "modules in daemon/ that the mapping does not name (add each to MAPPING, STAYS or "
            "OTHER_PACKAGES in scripts/rooms.py and run again):\n  " + "\n  ".join(unknown)
        )
    if both:
        problems.append("modules found both flat and in their room:\n  " + "\n  ".join(both))
    if problems:
        raise Refused("\n".join(problems))
    targets = {target.parent.name for _, target in plan.moves}
    plan.new_rooms = [room for room in ROOMS if room in targets and not (daemon / room / "__init__.py").exists()]
    return plan


def text_files(root: Path) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True, check=True
    ).stdout.decode()
    files = []
    for name in filter(None, listed.split("\0")):
        path = root / name
        if name in NOT_REWRITTEN or path.suffix.lower() in BINARY_SUFFIXES or not path.is_file():
            continue
        if path.stat().st_size <= MAX_TEXT_BYTES and _is_text(path):
            files.append(path)
    return sorted(files)


def _is_text(path: Path) -> bool:
    data = path.read_bytes()
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return b"\0" not in data


def tracked(root: Path) -> set[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout.decode()
    return {root / name for name in filter(None, listed.split("\0"))}


# References the rewriting cannot see (a name built at run time, a path joined of parts):
# printed for a look by hand.
SUSPECTS = re.compile(r"""stagewatch\.daemon\.\{|["']daemon["']\s*[/,]\s*["']_""")


# -- rewriting -------------------------------------------------------------------------------------


def _room_of(module: str) -> str | None:
    room = MAPPING.get(module)
    return room if room else None


def rewrite_references(text: str) -> str:
    def dotted(match: re.Match[str]) -> str:
        room = _room_of(match.group(1))
        return f"stagewatch.daemon.{room}.{match.group(1)}" if room else match.group(0)

    def file_path(match: re.Match[str]) -> str:
        room = _room_of(match.group(1))
        return f"daemon/{room}/{match.group(1)}" if room else match.group(0)

    def from_package(match: re.Match[str]) -> str:
        # `from stagewatch.daemon import Daemon, _store`: the public names stay, the modules go
        # to one import per room.
        names = _import_names(match.group("names"))
        by_room: dict[str, list[str]] = {}
        public = []
        for name in names:
            room = _room_of(name.split(" as ")[0].strip())
            if room:
                by_room.setdefault(room, []).append(name)
            else:
                public.append(name)
        if not by_room:
            return match.group(0)
        if "#" in match.group("names"):
            print(f"look by hand: a comment inside this import is dropped: {' '.join(match.group(0).split())}")
        indent = match.group("indent")
        lines = [f"{indent}from stagewatch.daemon import {', '.join(public)}"] if public else []
        lines += [
            f"{indent}from stagewatch.daemon.{room} import {', '.join(by_room[room])}" for room in sorted(by_room)
        ]
        return "\n".join(lines)

    text = DOTTED.sub(dotted, text)
    text = FILE_PATH.sub(file_path, text)
    return FROM_PACKAGE.sub(from_package, text)


def absolute_imports(text: str, package: str) -> str:
    """`from ._x import` in a module of `package` → `from stagewatch.daemon._x import`."""

    def absolute(match: re.Match[str]) -> str:
        parts = package.split(".")
        up = len(match.group("dots")) - 1
        base = parts[: len(parts) - up] if up else parts
        target = ".".join([*base, match.group("rest")] if match.group("rest") else base)
        return f"{match.group('indent')}from {target} import "

    return RELATIVE.sub(absolute, text)


def _import_names(group: str) -> list[str]:
    """The names of `a, b as c` or of a parenthesized list over lines, comments dropped."""
    lines = (line.split("#")[0] for line in group.strip().strip("()").splitlines())
    return [name.strip() for name in ",".join(lines).split(",") if name.strip()]


def daemon_home(text: str) -> str:
    """The daemon's side imports the layout's names from the base room, and says DaemonHome."""
    imported_home = False

    def split(match: re.Match[str]) -> str:
        nonlocal imported_home
        names = _import_names(match.group("names"))
        moved = [name for name in names if name.split(" as ")[0] in LAYOUT_NAMES]
        if not moved:
            return match.group(0)
        kept = [name for name in names if name not in moved]
        imported_home = imported_home or "Home" in moved
        indent = match.group("indent")
        lines = [f"{indent}from stagewatch._home import {', '.join(kept)}"] if kept else []
        renamed = [LAYOUT_NAMES[name.split(" as ")[0]] + name[len(name.split(" as ")[0]) :] for name in moved]
        lines.append(f"{indent}from {LAYOUT_MODULE} import {', '.join(renamed)}")
        return "\n".join(lines)

    text = HOME_IMPORT.sub(split, text)
    if imported_home:
        text = re.sub(r"(?<![\w.])Home\b", "DaemonHome", text)
    return text


# -- the layout: the client's Home and the daemon's -----------------------------------------------


def _segment(lines: list[str], node: ast.stmt) -> tuple[int, int]:
    """The lines of a statement, its decorators included, and the blank lines after it."""
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
    end = node.end_lineno or node.lineno
    while end < len(lines) and not lines[end].strip():
        end += 1
    return start, end


def _section_of(lines: list[str], start: int, class_start: int) -> str:
    for index in range(start - 1, class_start, -1):
        found = SECTION.match(lines[index])
        if found:
            return found.group("title")
    return "paths"


def _without_empty_sections(text: str) -> str:
    """Drop section comments with no member left under them."""
    lines = text.splitlines(keepends=True)
    kept = []
    for index, line in enumerate(lines):
        if SECTION.match(line):
            after = next((later for later in lines[index + 1 :] if later.strip()), "")
            if SECTION.match(after) or not after.startswith("    "):
                continue
        kept.append(line)
    return "".join(kept)


def split_layout(home: str, layout: str) -> tuple[str, str]:
    """Move the daemon's paths from the client's `Home` into `DaemonHome` (both texts)."""
    tree = ast.parse(home)
    lines = home.splitlines(keepends=True)
    home_class = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Home"), None)
    if home_class is None:
        raise Refused("client/_home.py defines no class Home: split the layout by hand")
    sections: dict[str, list[str]] = {}
    constants, functions, cut = [], [], set()
    for node in home_class.body:
        if isinstance(node, ast.FunctionDef) and node.name not in CLIENT_PATHS:
            start, end = _segment(lines, node)
            section = _section_of(lines, start, home_class.lineno - 1)
            sections.setdefault(section, []).append("".join(lines[start : node.end_lineno]))
            cut.update(range(start, end))
    for node in tree.body:
        names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        if any(name in LAYOUT_CONSTANTS for name in names) or getattr(node, "name", None) in LAYOUT_FUNCTIONS:
            start, end = _segment(lines, node)
            (constants if names else functions).append("".join(lines[start : node.end_lineno]))
            cut.update(range(start, end))
    if not (sections or constants or functions):  # split already (a docstring edited since stays)
        return home, layout
    docstring = tree.body[0]
    if isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant):
        cut.update(range(docstring.lineno - 1, docstring.end_lineno or docstring.lineno))
    home = CLIENT_HOME_DOC + _without_empty_sections("".join(line for i, line in enumerate(lines) if i not in cut))
    return home, _into_daemon_home(layout, sections, constants, functions)


def _into_daemon_home(layout: str, sections: dict[str, list[str]], constants: list[str], functions: list[str]) -> str:
    tree = ast.parse(layout)
    lines = layout.splitlines(keepends=True)
    daemon_class = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DaemonHome"), None)
    if daemon_class is None:
        raise Refused("the daemon's _layout.py defines no class DaemonHome")
    class_start = min([daemon_class.lineno, *(d.lineno for d in daemon_class.decorator_list)]) - 1
    end = daemon_class.end_lineno or daemon_class.lineno
    members = "".join(
        f"\n    # -- {title} {'-' * (82 - len(title))}\n" + "\n".join(texts) for title, texts in sections.items()
    )
    head = "".join(lines[:class_start])
    head = re.sub(
        r"^from stagewatch\._home import (.+)$",
        lambda m: "from stagewatch._home import " + ", ".join(n for n in _import_names(m.group(1)) if n == "Home"),
        head,
        flags=re.MULTILINE,
    )
    imports = "from pathlib import Path\n\nfrom stagewatch._names import check_name, check_run_id\n"
    head = head.replace("from stagewatch._home import", imports + "from stagewatch._home import", 1)
    if constants:
        head = head.rstrip("\n") + "\n\n" + "\n".join(constants) + "\n\n\n"
    text = head + "".join(lines[class_start:end])
    text += members + "".join(f"\n\n{function}" for function in functions) + "".join(lines[end:])
    return text


def plan_layout(plan: Plan) -> None:
    home_path = plan.root / "client" / "_home.py"
    layout_path = plan.daemon / MAPPING["_layout"] / "_layout.py"
    home = plan.changed.get(home_path) or home_path.read_text()
    source = next((s for s, target in plan.moves if target == layout_path), layout_path)
    layout = plan.changed.get(layout_path) or source.read_text()
    new_home, new_layout = split_layout(home, layout)
    if new_home != home_path.read_text():
        plan.changed[home_path] = new_home
    if new_layout != source.read_text():
        plan.changed[layout_path] = new_layout


def plan_rewrites(plan: Plan) -> None:
    """Every file's new text, keyed by where the file lies after the moves."""
    moved_to = dict(plan.moves)
    for path in text_files(plan.root):
        original = path.read_text()
        text = original
        if path.suffix == ".py" and plan.daemon in path.parents:
            package = ".".join(["stagewatch", *path.parent.relative_to(plan.root).parts])
            text = absolute_imports(text, package)
        text = rewrite_references(text)
        outside_client = plan.root / "client" not in path.parents
        is_layout = path.stem == "_layout" and plan.daemon in path.parents
        if path.suffix == ".py" and outside_client and not is_layout:
            text = daemon_home(text)
        if path == plan.root / "pyproject.toml":
            text = rewrite_pyproject(text, plan.root, plan.rooms_after())
        if text != original:
            plan.changed[moved_to.get(path, path)] = text
        for number, line in enumerate(text.splitlines(), 1):
            if SUSPECTS.search(line):
                print(f"look by hand: {path.relative_to(plan.root)}:{number}: {line.strip()}")
    plan_layout(plan)


def rewrite_pyproject(text: str, root: Path, present: list[str]) -> str:
    setuptools = tomllib.loads(text)["tool"]["setuptools"]
    packages: list[str] = []
    for package in setuptools["packages"]:
        packages.append(package)
        if package == "stagewatch.daemon":
            packages.extend(_room(room) for room in present if _room(room) not in setuptools["packages"])
    listed = "packages = [" + ", ".join(f'"{package}"' for package in packages) + "]"
    text = re.sub(r"^packages = \[[^\]]*\]", listed, text, count=1, flags=re.MULTILINE)
    client = sorted(f"stagewatch.{p.stem}" for p in (root / "client").glob("*.py") if p.stem != "__init__")
    start = text.find("# The rooms' import rules")
    if start < 0:
        start = text.find("[tool.importlinter]")
    if start < 0:  # no contracts yet: they go at the end
        start = len(text)
        text += "\n"
    after = re.search(r"^\[(?!\[?tool\.importlinter)", text[start:], flags=re.MULTILINE)
    end = start + after.start() if after else len(text)
    rest = text[end:]
    return text[:start] + contracts_toml(client, present) + ("\n" + rest if rest else "")


# -- applying --------------------------------------------------------------------------------------


def apply(plan: Plan) -> None:
    for room in plan.new_rooms:
        init = plan.daemon / room / "__init__.py"
        init.parent.mkdir(exist_ok=True)
        init.write_text(f'"""{ROOMS[room]}"""\n')
        subprocess.run(["git", "add", str(init)], cwd=plan.root, check=True)
    in_git = tracked(plan.root)
    for source, target in plan.moves:
        if source in in_git:
            subprocess.run(["git", "mv", str(source), str(target)], cwd=plan.root, check=True)
        else:  # a module not yet added: moved as a file, left unadded
            source.rename(target)
    for path, text in plan.changed.items():
        path.write_text(text)
    python = sorted(str(path) for path in plan.changed if path.suffix == ".py")
    python += [str(plan.daemon / room / "__init__.py") for room in plan.new_rooms]
    if python:
        ruff = [sys.executable, "-m", "ruff"]
        subprocess.run([*ruff, "check", "--quiet", "--select", "I", "--fix", *python], cwd=plan.root, check=False)
        layout = [str(path) for path in plan.changed if path.name in ("_home.py", "_layout.py")]
        if layout:  # the imports the split left unused
            subprocess.run(
                [*ruff, "check", "--quiet", "--select", "F401", "--fix", *layout], cwd=plan.root, check=False
            )
        subprocess.run([*ruff, "format", "--quiet", *python], cwd=plan.root, check=True)


def report(plan: Plan) -> None:
    for room in plan.new_rooms:
        print(f"new room  daemon/{room}/")
    for source, target in plan.moves:
        print(f"move      {source.relative_to(plan.root)} -> {target.relative_to(plan.root)}")
    for path in sorted(plan.changed):
        print(f"rewrite   {path.relative_to(plan.root)}")
    if not (plan.new_rooms or plan.moves or plan.changed):
        print("nothing to do: the daemon is in its rooms")


def _repository_root() -> Path:
    found = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit("rooms.py: not inside a git repository (give --root)")
    return Path(found.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="the repository root (default: the one holding the current folder)")
    parser.add_argument("--check", action="store_true", help="say what would change; change nothing")
    args = parser.parse_args(argv)
    root = (args.root or _repository_root()).resolve()
    try:
        plan = survey(root)
        plan_rewrites(plan)
    except Refused as refused:
        print(f"rooms.py: refused, nothing changed:\n{refused}", file=sys.stderr)
        return 2
    report(plan)
    if args.check:
        return 1 if (plan.new_rooms or plan.moves or plan.changed) else 0
    apply(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
