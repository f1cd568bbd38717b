"""`import stagewatch` stays light: pipelines pay for the client only."""

from tests.conftest import run_python

HEAVY = ["pyarrow", "pandas", "panel", "holoviews", "bokeh", "open3d", "pydantic", "loguru", "numpy"]


def test_import_stagewatch_loads_no_heavy_module() -> None:
    result = run_python(f"import sys, stagewatch; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_public_surface_is_small_and_typed() -> None:
    import stagewatch

    assert set(stagewatch.__all__) == {
        "LoggingHandler",
        "Run",
        "Stage",
        "current_run",
        "current_stage",
        "init",
        "loguru_sink",
        "shutdown",
        "stage",
    }
    from importlib.resources import files

    assert files("stagewatch").joinpath("py.typed").is_file()


def test_no_generic_top_level_modules_are_installed() -> None:
    result = run_python(
        "import importlib.util as u; print([m for m in ('client', 'daemon', 'ui') if u.find_spec(m)])", cwd="/"
    )  # outside the checkout: only what is installed
    assert result.stdout.strip() == "[]"


def test_importing_the_daemon_starts_no_client_machinery() -> None:
    """Any part of stagewatch runs the client's __init__; that must not load the sender or
    start a thread, and even the client's modules install no exit hook until a run starts."""
    code = """
import atexit, os, sys, threading
hooks = []
atexit.register = lambda f, *a, **k: hooks.append(str(getattr(f, "__module__", "")))
os.register_at_fork = lambda **k: hooks.extend(str(getattr(f, "__module__", "")) for f in k.values())
import stagewatch.daemon, stagewatch.daemon.projection._schema
print(sorted(m for m in ("stagewatch._run", "stagewatch._transport") if m in sys.modules), threading.active_count())
import stagewatch._run, stagewatch._logging
print([m for m in hooks if m.startswith("stagewatch")])
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "1", "[]"]


def test_the_public_names_load_on_first_use() -> None:
    result = run_python("import stagewatch; print(stagewatch.Run.__name__, callable(stagewatch.loguru_sink))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Run", "True"]
