"""stagewatch: per-stage timing, memory and outputs for perception pipelines.

Two lines in a pipeline::

    import stagewatch
    run = stagewatch.init(pipeline="perception")

    with run.stage("detection", input_path=path, sample_id="frame_047") as st:
        boxes = detector(image)
        st.save("frame_047.overlay.png", overlay_rgb)

Events go to the stagewatch daemon over ZeroMQ in the background. Nothing here blocks
the pipeline or raises into it: with no daemon running, events are spooled to disk and
delivered when one starts.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stagewatch._logging import LoggingHandler, loguru_sink
    from stagewatch._run import Run, Stage, StageSpec, current_run, current_stage, shutdown

__version__ = "0.1.0"
__all__ = [
    "LoggingHandler",
    "Run",
    "Stage",
    "current_run",
    "current_stage",
    "init",
    "loguru_sink",
    "shutdown",
    "stage",
]
# Loaded on first use: `import stagewatch.daemon` (or any other part) runs this file, and
# must not load the client's sender machinery for it.
_LAZY = {
    "LoggingHandler": "stagewatch._logging",
    "loguru_sink": "stagewatch._logging",
    "Run": "stagewatch._run",
    "Stage": "stagewatch._run",
    "current_run": "stagewatch._run",
    "current_stage": "stagewatch._run",
    "shutdown": "stagewatch._run",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stagewatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def init(
    pipeline: str,
    *,
    config: Mapping[str, Any] | None = None,
    dataset: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
) -> Run:
    """Start a run of `pipeline` and make it the current run.

    config: a snapshot of the pipeline's settings, stored with the run.
    dataset: a golden dataset file to check the run's results against.
    home / endpoint: where the daemon lives; default $STAGEWATCH_HOME (else ./output) and
    $STAGEWATCH_ENDPOINT (else the ipc socket inside the home).
    The run ends with `run.finish()`, when used as a context manager, or at exit.
    """
    from stagewatch._run import Run

    return Run(pipeline, config=config, dataset=dataset, home=home, endpoint=endpoint)


def stage(name: str, *, input_path: str | None = None, sample_id: str | None = None) -> StageSpec:
    """A stage of the current run, as a decorator or a context manager::

    @stagewatch.stage("preprocessing")
    def preprocess(frame): ...
    """
    from stagewatch._run import StageSpec

    return StageSpec(name, input_path, sample_id)
