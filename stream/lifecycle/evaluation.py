"""How good a model's scores are against labels: used at training time, and online per model version.

Plain numpy/pandas, no model and no I/O, so that the offline validation and
the online evaluation compute exactly the same statistic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties averaged)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score cut that maximises F1 on validation data, for the decision `score >= threshold`.

    Only cuts that rule can make are considered: all rows with the same
    score fall on the same side, so F1 is evaluated at the last row of each
    run of tied scores (LightGBM scores tie often: rows in the same leaves).
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    sorted_labels, sorted_scores = labels[order], scores[order]
    tp = np.cumsum(sorted_labels)
    fp = np.cumsum(1 - sorted_labels)
    fn = sorted_labels.sum() - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    best = int(ends[np.argmax(f1[ends])])
    return float(sorted_scores[best])


def _cuts(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores sorted descending, and the indices where a run of tied scores ends (the cuts `>=` can make)."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    ends = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
    return ordered, ends


def alert_rate_threshold(scores: np.ndarray, target: float) -> float:
    """The cut for `score >= threshold` whose alert rate on `scores` is nearest `target` (the lower on a tie).

    A rate fixed on validation data is set by the bulk of the (negative)
    rows, so it moves little from one training run to the next, unlike a
    cut chosen among the few positives. Tied scores fall on one side
    together, so a model with few distinct scores may only come near the
    target; the rate reached is recorded with the threshold.
    """
    ordered, ends = _cuts(scores)
    if not len(ordered):
        return 1.0
    rates = np.append(0.0, (ends + 1) / len(ordered))  # first: a cut above the top score, alerting on nothing
    cuts = np.append(np.nextafter(ordered[0], np.inf), ordered[ends])
    distance = np.abs(rates - target)
    nearest = np.flatnonzero(distance <= distance.min() + 1e-12)
    return float(cuts[nearest[0]])  # rates ascend: the first of the nearest is the lower rate


def precision_threshold(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The lowest cut for `score >= threshold` whose precision on validation is at least `target` (most recall)."""
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    ends = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
    if not len(ends):
        return 1.0
    tp = np.cumsum(labels[order])[ends]
    precision = tp / (ends + 1)
    allowed = ends[precision >= target]
    if not len(allowed):
        return float(np.nextafter(ordered[0], np.inf))
    return float(ordered[allowed[-1]])


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, log loss and Brier score of the scores; precision, recall and alert rate of `score >= threshold`."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    decided = scores >= threshold
    tp = int((decided & labels).sum())
    clipped = np.clip(scores, 1e-15, 1 - 1e-15)
    n = max(len(scores), 1)
    return {
        "auc": auc(labels, scores),
        "log_loss": float(-np.mean(np.where(labels, np.log(clipped), np.log1p(-clipped)))) if len(scores) else float("nan"),
        "brier": float(np.mean((scores - labels) ** 2)) if len(scores) else float("nan"),
        "precision": tp / int(decided.sum()) if decided.any() else float("nan"),
        "recall": tp / int(labels.sum()) if labels.any() else float("nan"),
        "alert_rate": int(decided.sum()) / n,
    }
