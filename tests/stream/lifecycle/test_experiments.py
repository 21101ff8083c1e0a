"""The experiment statistics, by simulation and against scipy/numpy on the same data.

Simulated experiments run side by side as one array each (the statistics
take leading dimensions), so a thousand of them checked after every batch
take seconds. The measured rates are printed (pytest -s shows them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sstats

from stream.lifecycle import experiments as ex

EXPERIMENTS, BATCH, BATCHES = 1000, 200, 50  # 10,000 labeled events per experiment, 50 looks


def _events(rng, noise_champion: float, noise_challenger: float, shape=(EXPERIMENTS, BATCH), log_odds: float = -2.5):
    """Labels and two models' scores: each model is the true log-odds plus its own noise (more noise, worse model).

    Mean log-odds -2.5 give about 12 % positives, -4.5 about 2 %.
    """
    logit = rng.normal(log_odds, 1.2, shape)
    y = (rng.random(shape) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    champion = 1 / (1 + np.exp(-(logit + rng.normal(0, noise_champion, shape))))
    challenger = 1 / (1 + np.exp(-(logit + rng.normal(0, noise_challenger, shape))))
    return y, champion, challenger


def _watch(noise_champion: float, noise_challenger: float, seed: int, log_odds: float = -2.5) -> dict:
    """Run the experiments, looking after every batch; what each test would have concluded, and when."""
    rng = np.random.default_rng(seed)
    paired, unpaired = ex.Paired(shape=(EXPERIMENTS,)), ex.Unpaired(shape=(EXPERIMENTS,))
    out = {name: np.zeros(EXPERIMENTS, bool) for name in ("paired", "unpaired", "naive", "promoted")}
    first = {name: np.full(EXPERIMENTS, np.nan) for name in ("paired", "unpaired")}
    for t in range(1, BATCHES + 1):
        y, champion, challenger = _events(rng, noise_champion, noise_challenger, log_odds=log_odds)
        paired.update(y, champion, challenger)
        on_b = rng.random(y.shape) < 0.5
        unpaired.update(y, np.where(on_b, challenger, champion), on_b)
        for name, obj in (("paired", paired), ("unpaired", unpaired)):
            decision = obj.summary()["log_loss"]["decision"]
            decided = decision != ex.KEEP
            first[name][decided & ~out[name]] = t * BATCH
            out[name] |= decided
            if name == "paired":
                out["promoted"] |= decision == ex.PROMOTE
        d = paired.diffs["log_loss"]
        out["naive"] |= np.abs(d.mean / np.sqrt(d.var / d.n)) > sstats.norm.ppf(1 - ex.ALPHA / 2)  # a fixed-n z-test
    out["first"] = first
    return out


@pytest.mark.parametrize("log_odds", [-2.5, -4.5], ids=["12% positives", "2% positives"])
def test_a_a_experiments_watched_after_every_batch_stay_below_alpha_where_a_z_test_does_not(log_odds):
    seen = _watch(0.8, 0.8, seed=1, log_odds=log_odds)
    rate, naive, unpaired = seen["paired"].mean(), seen["naive"].mean(), seen["unpaired"].mean()
    print(f"A/A ({log_odds} log-odds), {EXPERIMENTS} experiments x {BATCHES} looks: false positives paired {rate:.3f}, "
          f"unpaired {unpaired:.3f}, naive z-test {naive:.3f} (alpha {ex.ALPHA})")
    assert rate <= ex.ALPHA
    assert unpaired <= ex.ALPHA
    assert naive > 2 * ex.ALPHA  # the simulation can tell a test that peeks from one that may


def test_a_known_effect_is_found_sooner_paired_than_unpaired():
    seen = _watch(1.0, 0.6, seed=2)
    power, power_unpaired = seen["promoted"].mean(), seen["unpaired"].mean()
    n_paired, n_unpaired = np.nanmedian(seen["first"]["paired"]), np.nanmedian(seen["first"]["unpaired"])
    print(f"challenger better (noise 0.6 vs 1.0): promoted {power:.3f} (median n {n_paired:.0f}); "
          f"unpaired decided {power_unpaired:.3f} (median n {n_unpaired:.0f}) within {BATCH * BATCHES} events")
    assert power >= 0.95
    assert power_unpaired < power and n_paired < n_unpaired


def test_a_worse_challenger_is_stopped():
    seen = _watch(0.6, 1.0, seed=3)
    print(f"challenger worse (noise 1.0 vs 0.6): stopped {seen['paired'].mean():.3f} "
          f"(median n {np.nanmedian(seen['first']['paired']):.0f}), promoted {seen['promoted'].mean():.3f}")
    assert seen["paired"].mean() >= 0.95 and not seen["promoted"].any()


def test_the_interval_is_the_p_value_turned_around():
    rng = np.random.default_rng(4)
    effect, scale, n = rng.normal(0, 0.02, 500), rng.uniform(0.1, 1, 500), rng.integers(1, 50_000, 500)
    outside = np.abs(effect) > ex.radius(scale, n)
    assert np.array_equal(outside, ex.p_value(effect, scale, n) < ex.ALPHA)


def test_moments_match_numpy_and_merging_equals_one_pass():
    rng = np.random.default_rng(5)
    values = rng.normal(3, 2, 3000)
    one = ex.Moments.zeros()
    for chunk in np.array_split(values, 7):
        one.update(chunk)
    left, right = ex.Moments.zeros().update(values[:1234]), ex.Moments.zeros().update(values[1234:])
    merged = left.merge(right)
    for m in (one, merged):
        assert m.n == 3000
        np.testing.assert_allclose(m.mean, values.mean(), rtol=1e-12)
        np.testing.assert_allclose(m.var, values.var(ddof=1), rtol=1e-10)
    mask = rng.random(3000) < 0.3
    masked = ex.Moments.zeros().update(values, mask)
    np.testing.assert_allclose([masked.n, masked.mean, masked.var],
                               [mask.sum(), values[mask].mean(), values[mask].var(ddof=1)], rtol=1e-10)


def test_merged_comparisons_report_what_one_pass_reports():
    rng = np.random.default_rng(6)
    y, champion, challenger = _events(rng, 1.0, 0.7, shape=(4000,))
    on_b = rng.random(4000) < 0.3
    one = ex.Paired().update(y, champion, challenger).observe_decisions(champion, challenger, 0.3, 0.4)
    halves = [ex.Paired().update(y[s], champion[s], challenger[s]).observe_decisions(champion[s], challenger[s], 0.3, 0.4)
              for s in (slice(0, 1500), slice(1500, None))]
    a, b = one.report(), halves[0].merge(halves[1]).report()
    assert a["agreement"] == b["agreement"] and a["decision"] == b["decision"] and a["n"] == b["n"]
    np.testing.assert_allclose([a["effect"], *a["interval"], a["p_value"]], [b["effect"], *b["interval"], b["p_value"]])
    served = np.where(on_b, challenger, champion)
    whole = ex.Unpaired(share_b=0.3).update(y, served, on_b).report()
    parts = [ex.Unpaired(share_b=0.3).update(y[s], served[s], on_b[s]) for s in (slice(0, 999), slice(999, None))]
    joined = parts[0].merge(parts[1]).report()
    assert whole["sample_ratio"] == joined["sample_ratio"]
    np.testing.assert_allclose([whole["effect"], *whole["interval"]], [joined["effect"], *joined["interval"]])


def test_paired_effect_and_agreement_match_a_direct_computation():
    rng = np.random.default_rng(7)
    y, champion, challenger = _events(rng, 1.0, 0.7, shape=(5000,))
    report = ex.Paired().update(y, champion, challenger).observe_decisions(champion, challenger, 0.3, 0.4).report()
    ll = sstats.bernoulli  # the log loss is the Bernoulli negative log-likelihood
    diff = -ll.logpmf(y, champion) + ll.logpmf(y, challenger)
    assert report["n"] == 5000 and report["positives"] == int(y.sum())
    np.testing.assert_allclose(report["effect"], diff.mean(), rtol=1e-9)
    brier = (champion - y) ** 2 - (challenger - y) ** 2
    np.testing.assert_allclose(report["metrics"]["brier"]["effect"], brier.mean(), rtol=1e-9)
    agree = ((champion >= 0.3) == (challenger >= 0.4)).mean()
    assert report["agreement"]["rate"] == pytest.approx(agree)


def test_unpaired_effect_is_the_difference_of_the_arms_means():
    rng = np.random.default_rng(8)
    y, champion, challenger = _events(rng, 1.0, 0.7, shape=(6000,))
    on_b = rng.random(6000) < 0.5
    report = ex.Unpaired().update(y, np.where(on_b, challenger, champion), on_b).report()
    loss = -sstats.bernoulli.logpmf(y, np.where(on_b, challenger, champion))
    np.testing.assert_allclose(report["effect"], loss[~on_b].mean() - loss[on_b].mean(), rtol=1e-9)
    se = np.sqrt(loss[~on_b].var(ddof=1) / (~on_b).sum() + loss[on_b].var(ddof=1) / on_b.sum())
    np.testing.assert_allclose(report["interval"][1] - report["effect"], ex.radius(se * np.sqrt(6000), 6000))


def test_sample_ratio_mismatch_flags_45_55_at_10000_and_not_50_50():
    assert ex.srm_p_value([4500, 5500], [0.5, 0.5]) < ex.SRM_P
    assert ex.srm_p_value([5000, 5000], [0.5, 0.5]) == 1.0
    rng = np.random.default_rng(9)
    b = rng.binomial(10_000, 0.5, 200)
    flagged = [ex.srm_p_value([10_000 - k, k], [0.5, 0.5]) < ex.SRM_P for k in b]
    assert sum(flagged) <= 2  # a fair split is flagged at about SRM_P's rate
    for counts in ([4500, 5500], [5040, 4960], [700, 300]):
        expected = sstats.chisquare(counts, f_exp=np.array([0.5, 0.5]) * sum(counts)).pvalue
        assert ex.srm_p_value(counts, [0.5, 0.5]) == pytest.approx(expected)
    unpaired = ex.Unpaired(share_b=0.5).update(np.zeros(10_000), np.full(10_000, 0.1), np.arange(10_000) < 5500)
    report = unpaired.report()
    assert report["sample_ratio"]["mismatch"] and report["decision"] == ex.STOP


def test_an_empty_report_is_plain_json():
    for report in (ex.Paired().report(), ex.Unpaired().report()):
        json.dumps(report, allow_nan=False)
        assert report["n"] == 0 and report["interval"] == [None, None] and report["decision"] == ex.KEEP


def test_no_decision_before_enough_labels():
    y = np.array([1.0, 0.0] * 50)
    clearly_better = 0.05 + 0.9 * y
    report = ex.Paired().update(y, np.full(100, 0.5), clearly_better).report()
    assert report["p_value"] < 1e-6  # the evidence is there, but 100 labels are too few to trust its variance
    assert report["decision"] == ex.KEEP and report["n"] == 100
    enough = ex.Paired().update(np.tile(y, 5), np.full(500, 0.5), np.tile(clearly_better, 5)).report()
    assert enough["decision"] == ex.PROMOTE
