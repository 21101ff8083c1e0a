"""Distances between a window's bin counts and the reference's, and the ranking of attributions.

* PSI (population stability index): sum over bins of (p - q) ln(p / q),
  the symmetric Kullback-Leibler divergence in nats. An empty bin would
  make it infinite, so shares are floored at `EPSILON` (and renormalised)
  first. Bands: < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant.
* JS: Jensen-Shannon divergence in bits (base 2), in [0, 1]; finite without
  any floor.
* L-infinity: the largest difference of a category's share, for
  categorical columns (what TFDV and Vertex AI use).
* nDCG of the attribution ranking: the features ordered by the window's
  mean |contribution|, scored with the reference's mean |contribution| as
  gains; 1 when the order is the reference's.

`noise_floor` is how large each statistic gets from sampling alone, for a
window of n independent events against a reference of m, at a family-wise
error rate: with `tests` statistics computed per evaluation, each is given
alpha / tests (Bonferroni). A statistic only alarms above both its
threshold and its floor, so small windows cannot alarm on noise.
"""

from __future__ import annotations

import functools
import math

import numpy as np

#: Share given to an empty bin in PSI (1 in 10,000).
EPSILON = 1e-4


def shares(counts: np.ndarray, floor: float = 0.0) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    p = counts / total if total > 0 else np.full(len(counts), 1.0 / max(len(counts), 1))
    if floor > 0:
        p = np.maximum(p, floor)
        p = p / p.sum()
    return p


def psi(window: np.ndarray, reference: np.ndarray, epsilon: float = EPSILON) -> float:
    p, q = shares(window, epsilon), shares(reference, epsilon)
    return float(np.sum((p - q) * np.log(p / q)))


def js_divergence(window: np.ndarray, reference: np.ndarray) -> float:
    p, q = shares(window), shares(reference)
    m = (p + q) / 2
    return float((_kl_bits(p, m) + _kl_bits(q, m)) / 2)


def _kl_bits(p: np.ndarray, q: np.ndarray) -> float:
    nz = p > 0  # 0 log 0 = 0; q > 0 wherever p > 0 since q is a mixture containing p
    return float(np.sum(p[nz] * np.log2(p[nz] / q[nz])))


def linf(window: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(shares(window) - shares(reference)))) if len(window) else 0.0


def ndcg(reference: dict[str, float], current: dict[str, float], k: int | None = None) -> float:
    """nDCG@k of the features ranked by `current`, gains from `reference` (features missing from either count 0)."""
    names = list(reference)
    ranked = sorted(names, key=lambda n: (-current.get(n, 0.0), names.index(n)))[:k]
    ideal = sorted((max(v, 0.0) for v in reference.values()), reverse=True)[:k]
    discounts = 1.0 / np.log2(np.arange(2, len(ideal) + 2))
    best = float(np.dot(ideal, discounts))
    if best <= 0:
        return 1.0
    got = float(np.dot([max(reference[n], 0.0) for n in ranked], discounts[: len(ranked)]))
    return got / best


def noise_floor(statistic: str, n: float, m: float, bins: int, alpha: float, tests: int) -> float:
    """The value `statistic` stays below with probability 1 - alpha/tests when window and reference share one distribution.

    For two samples of sizes n and m over `bins` bins, (PSI and 8 ln 2 JS)
    / (1/n + 1/m) are both close to chi-square with bins - 1 degrees of
    freedom; a share differs by at most z sqrt(p(1 - p)(1/n + 1/m)), taken
    at p = 1/2 and split over the bins.
    """
    if n <= 0 or m <= 0 or bins < 2:
        return math.inf
    scale = 1.0 / n + 1.0 / m
    return _unit_floor(statistic, bins, alpha / max(tests, 1)) * (scale if statistic != "linf" else math.sqrt(scale))


@functools.lru_cache(maxsize=4096)
def _unit_floor(statistic: str, bins: int, level: float) -> float:
    # scipy.special rather than scipy.stats: the same quantiles, a tenth of the import time.
    from scipy.special import chdtri, ndtri

    if statistic == "psi":
        return float(chdtri(bins - 1, level))
    if statistic == "js":
        return float(chdtri(bins - 1, level) / (8 * math.log(2)))
    if statistic == "linf":
        return float(-ndtri(level / (2 * bins)) * 0.5)
    return 0.0
