"""PSI, JS, L-infinity and nDCG against independent computations (scipy, brute force); the noise floor's error rate."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from stream.monitor import drift


def _counts(rng, n_bins: int, total: int, empty: int = 0) -> np.ndarray:
    counts = rng.multinomial(total, rng.dirichlet(np.ones(n_bins))).astype(float)
    counts[:empty] = 0
    return counts


@pytest.mark.parametrize("seed", range(5))
def test_psi_is_the_symmetric_kl_divergence_of_the_floored_shares(seed):
    rng = np.random.default_rng(seed)
    window, reference = _counts(rng, 11, 5000, empty=seed % 3), _counts(rng, 11, 20000)
    # scipy.stats.entropy(p, q) is KL(p || q) in nats; it normalises its inputs itself.
    p = np.maximum(window / window.sum(), drift.EPSILON)
    q = np.maximum(reference / reference.sum(), drift.EPSILON)
    expected = entropy(p, q) + entropy(q, p)
    assert drift.psi(window, reference) == pytest.approx(expected, rel=1e-9)


def test_psi_of_equal_shares_is_zero_and_of_a_known_shift_is_known():
    assert drift.psi(np.array([10, 20, 30]), np.array([100, 200, 300])) == pytest.approx(0.0, abs=1e-12)
    # Two bins, 50/50 against 60/40: 0.1 ln(6/5) + 0.1 ln(5/4) = 0.1 ln(1.5).
    assert drift.psi(np.array([50, 50]), np.array([60, 40])) == pytest.approx(0.1 * math.log(1.5), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_js_divergence_is_scipys_distance_squared_in_bits(seed):
    rng = np.random.default_rng(100 + seed)
    window, reference = _counts(rng, 12, 3000, empty=seed % 4), _counts(rng, 12, 9000)
    expected = jensenshannon(window, reference, base=2) ** 2
    assert drift.js_divergence(window, reference) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_js_divergence_is_one_for_disjoint_distributions():
    assert drift.js_divergence(np.array([5, 0]), np.array([0, 7])) == pytest.approx(1.0)


def test_linf_is_the_largest_share_difference():
    window, reference = np.array([10, 30, 60, 0]), np.array([25, 25, 25, 25])
    expected = max(abs(w / 100 - r / 100) for w, r in zip(window, reference))
    assert drift.linf(window, reference) == pytest.approx(expected)


def _ndcg_brute(reference: dict, current: dict, k=None) -> float:
    """DCG over positions 1.. of the current ranking, gains from the reference; ideal: every ordering's best."""
    order = sorted(current, key=lambda n: -current[n])[:k]
    dcg = sum(reference[n] / math.log2(i + 2) for i, n in enumerate(order))
    best = max(
        sum(reference[n] / math.log2(i + 2) for i, n in enumerate(perm[:k]))
        for perm in itertools.permutations(reference)
    )
    return dcg / best


@pytest.mark.parametrize("seed", range(6))
def test_ndcg_matches_a_brute_force_ideal(seed):
    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(6)]
    reference = dict(zip(names, rng.random(6).tolist()))
    current = dict(zip(names, rng.random(6).tolist()))
    k = None if seed % 2 else 4
    assert drift.ndcg(reference, current, k) == pytest.approx(_ndcg_brute(reference, current, k))
    assert drift.ndcg(reference, reference, k) == pytest.approx(1.0)


def test_a_reversed_ranking_scores_below_clarifys_line():
    reference = {f"f{i}": 2.0 ** -i for i in range(8)}
    reversed_ = {n: -v for n, v in reference.items()}
    assert drift.ndcg(reference, reversed_) < 0.9


def test_the_noise_floor_holds_the_family_wise_error_rate():
    # Window and reference drawn from one distribution: the share of
    # evaluations in which any of `tests` statistics crosses its floor
    # stays near or below alpha.
    rng = np.random.default_rng(3)
    shares = rng.dirichlet(np.ones(10))
    alpha, tests, trials = 0.05, 10, 400
    crossed = 0
    for _ in range(trials):
        reference = rng.multinomial(20_000, shares)
        windows = [rng.multinomial(2_000, shares) for _ in range(tests)]
        floor = drift.noise_floor("psi", 2_000, 20_000, 10, alpha, tests)
        crossed += any(drift.psi(w, reference) > floor for w in windows)
    assert crossed / trials < 2 * alpha
    # And it is not vacuous: a floor without the correction is crossed far more often.
    naive = drift.noise_floor("psi", 2_000, 20_000, 10, alpha, 1)
    assert naive < drift.noise_floor("psi", 2_000, 20_000, 10, alpha, tests)
