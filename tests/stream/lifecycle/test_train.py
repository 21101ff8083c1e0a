"""Training: the AUC, the threshold choice, and what `train` writes for the worker to load."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from features.feast_repo import load_plan, open_store
from stream.lifecycle.evaluation import auc, best_f1_threshold
from stream.lifecycle.train import train, training_frame
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
    x, y, _, _, _ = training_frame(repo, None, None, None)
    assert list(x.columns) == list(plan.vector)
    assert set(np.unique(y)) == {0, 1}

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
