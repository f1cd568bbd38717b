"""Comparing runs: a run against another or against a baseline of several, regressions
judged against a pipeline's own history, and the statistical tests they use."""
