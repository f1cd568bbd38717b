"""Spacing costly rewrites by a multiple of what they cost (audit trails, checkpoints, COCO summaries)."""

from __future__ import annotations


class CostThrottle:
    """Lets a costly write happen again only after `factor` times what it last cost.

    A long run's audit trail and the checkpoint grow with the run; rewriting them every
    flush would make ingest O(n^2). Spacing each rewrite by 10x its cost keeps their share
    of the daemon's time near 10%, whatever their size.
    """

    def __init__(self, factor: float = 10.0, min_interval_s: float = 0.0) -> None:
        self.factor = factor
        self.min_interval_s = min_interval_s
        self._next: dict[str, float] = {}

    def due(self, key: str, now: float) -> bool:
        return now >= self._next.get(key, 0.0)

    def spent(self, key: str, started: float, finished: float) -> None:
        self._next[key] = finished + max(self.min_interval_s, self.factor * (finished - started))

    def forget(self, key: str) -> None:
        self._next.pop(key, None)
