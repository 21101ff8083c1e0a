"""Online metrics against a reference written separately (scipy's Mann-Whitney U, plain numpy), on the same rows."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from scipy.stats import mannwhitneyu

from stream.lifecycle.labeled import rows
from stream.lifecycle.online_eval import OnlineEvaluation, WindowStats
from tests.stream.lifecycle.test_label_join import DAY, T0, Harness, ids_in


def reference(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    y = labels.astype(bool)
    u = mannwhitneyu(scores[y], scores[~y], alternative="two-sided", method="asymptotic").statistic
    p = np.clip(scores, 1e-15, 1 - 1e-15)
    flagged = scores >= threshold
    ece = 0.0
    for b in range(10):
        inside = (scores >= b / 10) & ((scores < (b + 1) / 10) | (b == 9))
        if inside.any():
            ece += abs(scores[inside].mean() - y[inside].mean()) * inside.mean()
    return {
        "auc": u / (y.sum() * (~y).sum()),
        "log_loss": -np.mean(y * np.log(p) + (~y) * np.log(1 - p)),
        "brier": np.mean((scores - y) ** 2),
        "precision": (flagged & y).sum() / flagged.sum(),
        "recall": (flagged & y).sum() / y.sum(),
        "calibration_error": ece,
    }


def _data(seed: int, n: int = 3000):
    rng = np.random.default_rng(seed)
    # Rounded scores tie often, as LightGBM's do.
    scores = np.round(rng.beta(0.6, 4.0, n), 3)
    labels = (rng.random(n) < scores).astype(float)
    return scores, labels


@pytest.mark.parametrize("seed", [1, 2])
def test_window_metrics_equal_the_reference(seed):
    scores, labels = _data(seed)
    stats = WindowStats()
    for s, y in zip(scores, labels):
        stats.add_labeled(float(s), float(y), 0.3)
    got, want = stats.metrics(), reference(scores, labels, 0.3)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_merged_halves_equal_one_pass_and_a_correction_takes_its_old_label_back():
    scores, labels = _data(3)
    a, b, whole = WindowStats(), WindowStats(), WindowStats()
    for i, (s, y) in enumerate(zip(scores, labels)):
        (a if i % 2 else b).add_labeled(float(s), float(y), 0.3)
        whole.add_labeled(float(s), float(y), 0.3)
    assert a.merge(b).metrics() == pytest.approx(whole.metrics(), nan_ok=True)
    flipped = labels.copy()
    flipped[:100] = 1 - flipped[:100]
    for s, old, new in zip(scores[:100], labels[:100], flipped[:100]):
        whole.add_labeled(float(s), float(old), 0.3, sign=-1)
        whole.add_labeled(float(s), float(new), 0.3)
    assert whole.metrics()["auc"] == pytest.approx(reference(scores, flipped, 0.3)["auc"], rel=1e-12)


def test_the_estimate_from_calibrated_scores_is_close_to_the_realized_value():
    scores, labels = _data(4, n=40_000)
    stats = WindowStats()
    for s, y in zip(scores, labels):
        stats.add_prediction(float(s), 0.3)
        stats.add_labeled(float(s), float(y), 0.3)
    est, real = stats.estimate(), stats.metrics()
    for name in ("auc", "log_loss", "brier", "precision", "recall"):
        assert est[name] == pytest.approx(real[name], abs=0.02), name
    # Expected AUC: pairs weighted by how likely each is (positive, negative), brute force on a subset.
    small = WindowStats()
    s = scores[:300]
    for x in s:
        small.add_prediction(float(x), 0.3)
    w = s[:, None] * (1 - s[None, :])
    order = (s[:, None] > s[None, :]) + 0.5 * (s[:, None] == s[None, :])
    assert small.estimate()["auc"] == pytest.approx((w * order).sum() / (s.sum() * (1 - s).sum()), rel=1e-12)


def test_evaluation_of_joined_records_equals_the_reference_on_the_final_rows():
    h = Harness(default_label=0.0)
    rng = np.random.default_rng(5)
    ids = ids_in(0, 400)
    scores = np.round(rng.random(400), 2)
    h.run([h.pred(tid, T0 + i * 60_000, score=float(s)) for i, (tid, s) in enumerate(zip(ids, scores))])
    truth = (rng.random(400) < scores).astype(int)
    fraud = [(tid, i) for i, tid in enumerate(ids) if truth[i]]
    h.run([h.lab(tid, 1, T0 + DAY + i * 60_000) for tid, i in fraud])
    # Corrections (a chargeback reversed), duplicates, then the window closes for everyone else.
    h.run([h.lab(tid, 0, T0 + 2 * DAY) for tid, _ in fraud[:20]] + [h.lab(tid, 0, T0 + 2 * DAY) for tid, _ in fraud[:5]])
    h.run(h.tick(T0 + 9 * DAY))
    final = rows(h.records, "tid")
    assert len(final) == 400
    evaluation = OnlineEvaluation("tid", window_ms=30 * DAY)
    for r in h.records + h.records[:50]:  # a crash may send records twice
        evaluation.add_labeled(orjson.loads(orjson.dumps(r)))
    got = evaluation.combined("v1").metrics()
    s = np.array([final[t]["score"] for t in ids])
    y = np.array([final[t]["label"] for t in ids], dtype=float)
    want = reference(s, y, 0.5)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9), name
    assert got["labeled"] == 400 and got["positives"] == len(fraud) - 20


def test_a_window_is_provisional_until_its_labels_have_matured():
    evaluation = OnlineEvaluation("tid", window_ms=DAY, label_window_ms=7 * DAY)
    record = {"tid": "a", "kind": "joined", "revision": 1, "label": 1, "label_time": None, "label_source": "label",
              "model_version": "v1", "score": 0.9, "scores": {"v1": 0.9, "v2": 0.4}, "route": "champion",
              "threshold": 0.5, "features": {}, "event_time": "2026-01-01T10:00:00.000Z"}
    evaluation.add_prediction(record)
    evaluation.add_labeled(dict(record, label_time="2026-01-02T00:00:00.000Z"))
    (champion, shadow) = sorted(evaluation.report(), key=lambda r: r["route"])
    assert (champion["version"], shadow["version"], shadow["route"]) == ("v1", "v2", "shadow")
    assert champion["provisional"] and champion["coverage"] == 1.0
    assert champion["label_delay"]["count"] == 1 and champion["label_delay"]["mean_s"] == 14 * 3600
    evaluation.observe_clock(T0 * 0 + 1_767_225_600_000 + 8 * DAY)  # 2026-01-09
    matured = evaluation.report()[0]
    assert not matured["provisional"] and matured["estimate_error"]["brier"] == pytest.approx(
        matured["metrics"]["brier"] - matured["estimate"]["brier"])
    assert champion["estimate_error"] is None
    assert math.isnan(champion["metrics"]["auc"])  # one class only
