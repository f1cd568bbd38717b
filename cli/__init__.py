"""stagewatch.cli: the `stagewatch` command, above the daemon and the dashboard.

One module per command group: service (daemon, config, doctor, gc, rebuild, keys), demo,
history (runs, show, query, stats, export), dashboard (ui), groundtruth (eval, gt).
Run as `stagewatch …` or `python -m stagewatch.cli …`.
"""

from stagewatch.cli._main import main

__all__ = ["main"]
