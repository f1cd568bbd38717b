"""`import stagewatch` stays light: pipelines pay for the client only."""

from tests.conftest import run_python

HEAVY = ["pyarrow", "pandas", "panel", "holoviews", "bokeh", "open3d", "pydantic", "loguru", "numpy"]


def test_import_stagewatch_loads_no_heavy_module() -> None:
    result = run_python(f"import sys, stagewatch; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_public_surface_is_small_and_typed() -> None:
    import stagewatch

    assert set(stagewatch.__all__) == {"LoggingHandler", "Run", "Stage", "current_run", "current_stage", "init",
                                       "loguru_sink", "shutdown", "stage"}  # fmt: skip
    from importlib.resources import files

    assert files("stagewatch").joinpath("py.typed").is_file()


def test_no_generic_top_level_modules_are_installed() -> None:
    result = run_python(
        "import importlib.util as u; print([m for m in ('client', 'daemon', 'ui') if u.find_spec(m)])", cwd="/"
    )  # outside the checkout: only what is installed
    assert result.stdout.strip() == "[]"
