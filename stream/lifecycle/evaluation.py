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
