"""Upkeep while the daemon runs: the scheduler, liveness, disk checks, scrubbing, `doctor`."""
