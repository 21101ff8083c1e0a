"""Training: the AUC, the threshold choice, and what `train` writes for the worker to load.

More in this file's second half: reproducible models, the threshold rule on
validation data, label maturity, the metadata and reference the registry keeps.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from features.feast_repo import load_plan, open_store
from stream.lifecycle.evaluation import alert_rate_threshold, auc, best_f1_threshold, precision_threshold
from stream.lifecycle.train import ThresholdRule, mature_rows, train, training_frame
from stream.registry import open_store as open_model_store
from stream.serving.model import CHAMPION_FILE, META_FILE, MODEL_FILE, ModelError, load_model


def pairwise_auc(labels, scores) -> float:
    """P(score of a positive > score of a negative), a tie counting one half: every pair, by brute force."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def f1_at(labels, scores, cut: float) -> float:
    """F1 of deciding `score >= cut`, as the scorer decides."""
    decided = np.asarray(scores) >= cut
    labels = np.asarray(labels).astype(bool)
    tp, fp, fn = int((decided & labels).sum()), int((decided & ~labels).sum()), int((~decided & labels).sum())
    return 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("seed", range(6))
def test_auc_is_the_pairwise_probability_with_ties_counting_half(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[:2] = [True, False]  # both classes present
    # Few distinct values: many ties, within a class and across classes
    # (positives score a little higher on average).
    scores = (rng.integers(0, 5, n) + labels * rng.integers(0, 3, n)) / 8
    assert len(set(scores[labels]) & set(scores[~labels])) > 0
    assert auc(labels.astype(int), scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_auc_of_perfect_reversed_and_all_tied_scores():
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(labels, np.full(4, 0.5)) == 0.5
    assert np.isnan(auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_the_threshold_is_the_score_cut_that_maximises_f1():
    # Sorted by score: 0.95+ 0.9+ 0.8- 0.7+ 0.6+ 0.4- 0.3- 0.2-. Cutting at
    # 0.6 catches every positive for one false alarm: F1 8/9; the next best
    # cut, 0.4, has F1 0.8.
    scores = np.array([0.2, 0.7, 0.8, 0.95, 0.3, 0.6, 0.4, 0.9])
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    threshold = best_f1_threshold(labels, scores)
    assert threshold == 0.6
    assert f1_at(labels, scores, threshold) == pytest.approx(8 / 9)
    assert f1_at(labels, scores, threshold) == max(f1_at(labels, scores, cut) for cut in scores)


def test_with_tied_scores_the_threshold_still_maximises_the_f1_of_score_at_least_threshold():
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.5])
    labels = np.array([1, 1, 0, 0, 0])
    threshold = best_f1_threshold(labels, scores)
    assert f1_at(labels, scores, threshold) == max(f1_at(labels, scores, cut) for cut in scores)


def test_a_trained_model_loads_with_its_checksum_and_the_plans_vector_in_order(trained_repo, tmp_path):
    repo = trained_repo["path"]
    plan = load_plan(open_store(repo))
    frame = training_frame(repo, None, None, None)
    assert list(frame.x.columns) == list(plan.vector)
    assert set(np.unique(frame.y)) == {0, 1}

    models = tmp_path / "models"
    result = train(repo, models, num_trees=5)
    assert result.path == models / result.version
    assert (models / CHAMPION_FILE).read_text().strip() == result.version
    meta = json.loads((result.path / META_FILE).read_text())
    assert meta["sha256"] == hashlib.sha256((result.path / MODEL_FILE).read_bytes()).hexdigest()
    assert meta["features"] == list(plan.vector)
    assert (meta["threshold"], meta["validation_auc"]) == (result.threshold, result.validation_auc)

    # The model directory's champion is what the worker loads, with the plan's vector required.
    model = load_model(models, expected_features=plan.vector)
    assert model.version == result.version
    assert model.features == plan.vector
    assert model.threshold == result.threshold
    assert model.booster.num_feature() == len(plan.vector)

    # The checksum is the one of these bytes: one byte changed is refused.
    tampered = tmp_path / "tampered"
    shutil.copytree(result.path, tampered)
    text = (tampered / MODEL_FILE).read_bytes()
    (tampered / MODEL_FILE).write_bytes(text[:-2] + (b"0" if text[-2:-1] != b"0" else b"1") + text[-1:])
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model(tampered, expected_features=plan.vector, check_in_child=False)


# -- Threshold rules, brute force ----------------------------------------------


def alert_rate_at(scores, cut: float) -> float:
    return float(np.mean(np.asarray(scores) >= cut))


def precision_at(labels, scores, cut: float) -> float:
    decided = np.asarray(scores) >= cut
    return float(np.asarray(labels)[decided].mean()) if decided.any() else float("nan")


@pytest.mark.parametrize("seed", range(5))
def test_the_alert_rate_threshold_is_the_cut_nearest_the_target(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 30, int(rng.integers(20, 300))) / 30  # many ties
    target = float(rng.uniform(0.01, 0.3))
    cut = alert_rate_threshold(scores, target)
    best = min(abs(alert_rate_at(scores, s) - target) for s in [*set(scores), 2.0])  # 2.0: alert on nothing
    assert abs(alert_rate_at(scores, cut) - target) == pytest.approx(best, abs=1e-12)


def test_the_alert_rate_threshold_between_two_equally_near_cuts_takes_the_lower_rate():
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])  # cuts alert on 0%, 10%, 40%, 100%
    assert alert_rate_threshold(scores, 0.25) == 0.9  # 10% and 40% are both 15 points away
    assert alert_rate_threshold(scores, 0.3) == 0.8
    assert alert_rate_at(scores, alert_rate_threshold(scores, 0.04)) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_the_precision_threshold_is_the_lowest_cut_reaching_the_target(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 300))
    labels = rng.random(n) < 0.2
    scores = np.round(np.clip(rng.normal(0.3 + 0.3 * labels, 0.2), 0, 1), 2)
    target = 0.5
    cut = precision_threshold(labels.astype(int), scores, target)
    reachable = [s for s in set(scores) if precision_at(labels, scores, s) >= target]
    assert cut == min(reachable)


def test_a_precision_no_cut_reaches_alerts_on_nothing():
    scores, labels = np.array([0.9, 0.9, 0.9, 0.1]), np.array([0, 1, 0, 1])
    assert alert_rate_at(scores, precision_threshold(labels, scores, 0.9)) == 0.0


def test_rows_whose_negative_label_could_not_have_arrived_yet_are_left_out():
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    event_time = pd.Series([t0 + pd.Timedelta(days=d) for d in range(10)])
    label = pd.Series([0, 0, 0, 1, 0, 0, 1, np.nan, 1, 1])  # the last days: only positives are known yet
    delay = pd.Series([pd.Timedelta(days=3)] * 10)
    delay[3] = delay[6] = delay[8] = delay[9] = pd.Timedelta(hours=1)
    mature, maturity = mature_rows(event_time, label, event_time + delay, event_time.max())
    assert maturity == pd.Timedelta(days=3)
    assert mature.tolist() == [True] * 7 + [False] * 3
    everything, none = mature_rows(event_time, label, None, event_time.max())
    assert everything.all() and none == pd.Timedelta(0)


# -- What `train` writes: reproducible, with its rule, maturity, metadata and reference --


@pytest.fixture(scope="module")
def trained_twice(trained_repo, tmp_path_factory):
    """The same repo trained twice into one store (champion, then challenger), each with another threshold rule."""
    models = tmp_path_factory.mktemp("twice") / "models"
    first = train(trained_repo["path"], models, num_trees=12, seed=5, rule=ThresholdRule("alert_rate", 0.02))
    second = train(
        trained_repo["path"], models, num_trees=12, seed=5, rule=ThresholdRule("precision", 0.5), trigger="drift:test",
        alias="challenger",
    )
    frame = training_frame(trained_repo["path"], None, None, None)
    return {"models": models, "first": first, "second": second, "frame": frame, "cfg": trained_repo["cfg"]}


def validation_rows(frame):
    order = np.argsort(frame.event_time.to_numpy(), kind="stable")
    valid = order[int(len(order) * 0.8):]
    return frame.x.to_numpy()[valid], frame.y[valid]


def test_training_twice_on_the_same_data_gives_the_same_bytes_under_two_versions(trained_twice):
    first, second, models = trained_twice["first"], trained_twice["second"], trained_twice["models"]
    assert (first.path / MODEL_FILE).read_bytes() == (second.path / MODEL_FILE).read_bytes()
    assert first.version != second.version
    assert first.version.split("-")[2] == second.version.split("-")[2]  # the same model's sha256
    store = open_model_store(models)
    assert store.aliases() == {"champion": first.version, "challenger": second.version}
    meta = store.meta(second.version)
    assert (meta["parent"], meta["trigger"], meta["seed"]) == (first.version, "drift:test", 5)
    assert store.meta(first.version)["parent"] is None and store.meta(first.version)["trigger"] == "manual"


def test_the_threshold_rules_hold_on_the_validation_rows(trained_twice):
    x, y = validation_rows(trained_twice["frame"])
    first, second = trained_twice["first"], trained_twice["second"]
    scores = load_model(first.path, check_in_child=False).predict(x)  # the same model file for both

    meta = first.meta
    rule, cut = meta["threshold_rule"], meta["threshold"]
    assert (rule["kind"], rule["target"]) == ("alert_rate", 0.02)
    assert 0.0 < cut < 1.0  # not the old "score rounded to 1"
    nearest = min(abs(alert_rate_at(scores, s) - 0.02) for s in [*set(scores), 2.0])
    assert abs(alert_rate_at(scores, cut) - 0.02) == pytest.approx(nearest, abs=1e-12)
    assert rule["achieved"]["alert_rate"] == pytest.approx(alert_rate_at(scores, cut))
    decided = scores >= cut
    assert rule["achieved"]["alerts"] == int(decided.sum()) and rule["achieved"]["rows"] == len(y)
    assert meta["metrics"]["auc"] == pytest.approx(pairwise_auc(y, scores), abs=1e-9)
    assert meta["metrics"]["precision"] == pytest.approx(y[decided].mean())
    assert meta["metrics"]["recall"] == pytest.approx(y[decided].sum() / y.sum())
    assert meta["metrics"]["brier"] == pytest.approx(np.mean((scores - y) ** 2))
    assert meta["metrics"]["log_loss"] == pytest.approx(-np.mean(y * np.log(scores) + (1 - y) * np.log(1 - scores)))
    assert meta["validation_auc"] == meta["metrics"]["auc"] > 0.9

    meta = second.meta
    rule, cut = meta["threshold_rule"], meta["threshold"]
    assert (rule["kind"], rule["target"]) == ("precision", 0.5)
    assert precision_at(y, scores, cut) >= 0.5 == rule["target"]
    assert cut == min(s for s in set(scores) if precision_at(y, scores, s) >= 0.5)  # the most recall at that precision
    assert rule["achieved"]["precision"] == pytest.approx(precision_at(y, scores, cut))


def test_only_rows_with_final_labels_are_trained_on(trained_twice):
    window = trained_twice["first"].meta["training_window"]
    maturity = trained_twice["cfg"].legit_label_delay.total_seconds()  # the generator's: negatives known 12 h later
    assert window["label_maturity_s"] == maturity
    assert pd.Timestamp(window["end"]) <= pd.Timestamp(window["cutoff"]) - pd.Timedelta(seconds=maturity)
    assert trained_twice["frame"].event_time.max() == pd.Timestamp(window["end"])


def test_the_reference_is_the_validation_rows_binned_as_the_monitor_reads_them(trained_twice):
    meta = trained_twice["first"].meta
    ref = meta["reference"]
    x, y = validation_rows(trained_twice["frame"])
    assert ref["rows"] == len(x) == meta["rows"]["validation"]
    assert set(ref["features"]) == set(meta["features"])
    for j, name in enumerate(meta["features"]):
        entry, column = ref["features"][name], x[:, j]
        present = column[~np.isnan(column)]
        assert entry["missing"] == int(np.isnan(column).sum())
        integral = np.array_equal(present, np.round(present))
        if entry["kind"] == "categorical":
            assert integral and len(set(present)) <= 20
            assert entry["counts"] == {str(int(v)): int((present == v).sum()) for v in set(present)}
        else:
            assert not (integral and len(set(present)) <= 20)
            edges = entry["edges"]
            assert edges == sorted(set(edges)) and len(edges) <= 9
            assert edges == pytest.approx(list(np.unique(np.quantile(present, [i / 10 for i in range(1, 10)]))), rel=1e-12)
            bounds = [-np.inf, *edges, np.inf]
            assert entry["counts"] == [int(((present >= lo) & (present < hi)).sum()) for lo, hi in zip(bounds, bounds[1:])]
            assert (entry["min"], entry["max"]) == (present.min(), present.max())
    assert ref["features"]["card_profile__is_premium"] == {
        "kind": "categorical", "missing": 0, "counts": {k: int(v) for k, v in pd.Series(x[:, meta["features"].index("card_profile__is_premium")]).astype(int).astype(str).value_counts().items()}
    }
    assert ref["score"]["kind"] == "numeric" and sum(ref["score"]["counts"]) == len(x)
    contributions = ref["contributions"]
    assert set(contributions) == set(meta["features"]) and all(v >= 0 for v in contributions.values())
    assert ref["contribution_rank"] == sorted(meta["features"], key=lambda n: -contributions[n])
    assert contributions[ref["contribution_rank"][0]] > 0
