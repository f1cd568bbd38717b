"""The statistics `stagewatch compare` calls a difference with, numpy only (scipy is a dev
dependency: tests/test_compare.py checks these against scipy.stats).

- `mann_whitney_p`: the two-sided Mann-Whitney U test for a shift of one sample against the
  other, normal approximation with the tie and continuity corrections (scipy's
  `mannwhitneyu(method="asymptotic")`). Rank-based: one slow outlier cannot make a shift.
- `bootstrap_interval`: the percentile bootstrap confidence interval of the difference of a
  quantile (median, p95) between two independent samples, each resampled on its own.
- `two_proportions_p`: the two-sided pooled z-test of two rates (failure rates).
- `mcnemar_p`: the exact McNemar test of two verdicts on the same samples (accuracy when both
  runs judged one golden set): only the samples whose verdict changed say anything.
"""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 2000
MAX_RESAMPLED = 20_000  # values per side a bootstrap draws from; past that a random subset (a wider interval)
CHUNK_VALUES = 4_000_000  # values resampled at once: bounds the memory of one bootstrap step (32 MB)


def mann_whitney_p(first: np.ndarray, second: np.ndarray) -> float:
    """Two-sided p-value of the Mann-Whitney U test (asymptotic, tie- and continuity-corrected);
    1.0 when either side is empty or every value is the same."""
    n1, n2 = len(first), len(second)
    if n1 == 0 or n2 == 0:
        return 1.0
    ranks, ties = _ranks(np.concatenate([first, second]))
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(variance)
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def _ranks(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Average ranks (1-based, ties sharing their mean rank) and the tie term sum(t^3 - t)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    counts = np.diff(np.r_[starts, len(values)])
    mean_rank = starts + (counts + 1) / 2  # the mean of ranks start+1 .. start+count
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, counts)
    return ranks, float((counts.astype(np.float64) ** 3 - counts).sum())


def bootstrap_interval(
    first: np.ndarray, second: np.ndarray, q: float, confidence: float, seed: int = 0
) -> tuple[float, float]:
    """The percentile-bootstrap `confidence` interval of quantile_q(second) - quantile_q(first)
    (numpy's linear interpolation), each side resampled with replacement on its own.
    Deterministic for a seed: the same comparison always reads the same."""
    rng = np.random.default_rng(seed)
    first, second = _at_most(first, rng), _at_most(second, rng)
    differences = _resampled_quantiles(second, q, rng) - _resampled_quantiles(first, q, rng)
    tail = (1 - confidence) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    return float(low), float(high)


def _at_most(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return values if len(values) <= MAX_RESAMPLED else rng.choice(values, MAX_RESAMPLED, replace=False)


def _resampled_quantiles(values: np.ndarray, q: float, rng: np.random.Generator) -> np.ndarray:
    per_chunk = max(1, CHUNK_VALUES // len(values))
    found = []
    for start in range(0, RESAMPLES, per_chunk):
        draws = rng.integers(0, len(values), (min(per_chunk, RESAMPLES - start), len(values)))
        found.append(np.quantile(values[draws], q, axis=1))
    return np.concatenate(found)


def two_proportions_p(hits_first: int, total_first: int, hits_second: int, total_second: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test; 1.0 when it cannot say."""
    if total_first == 0 or total_second == 0:
        return 1.0
    pooled = (hits_first + hits_second) / (total_first + total_second)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / total_first + 1 / total_second))
    if spread == 0:
        return 1.0
    z = abs(hits_second / total_second - hits_first / total_first) / spread
    return math.erfc(z / math.sqrt(2))


def mcnemar_p(worse: int, better: int) -> float:
    """Two-sided p-value of the exact McNemar test: `worse` samples went from correct to not,
    `better` the other way, the rest kept their verdict; under no change each changed sample
    went either way with even odds (scipy's `binomtest(min, worse + better, 0.5)`). 1.0 when
    none changed."""
    changed, fewer = worse + better, min(worse, better)
    if changed == 0 or 2 * fewer == changed:
        return 1.0
    # log C(changed, k) for k = 0..fewer by its running product, in logs: exact at any size
    steps = np.arange(1, fewer + 1)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(changed - steps + 1) - np.log(steps))])
    tail = np.exp(log_choose - changed * math.log(2)).sum()
    return min(1.0, float(2 * tail))
