"""Precision and recall of blocking decisions, naive and weighted by the inverse of the logged propensity.

Labels exist only for events that were let through. Counting the labeled
rows as they are (*naive*) sees every fraud the model missed and only the
blocks that exploration let through: recall comes out far too low, and
precision is off wherever segments were explored at different shares.
Weighting each let-through row by 1/propensity (its probability of being let
through, stream/serving/explore.py) makes each explored block stand for the
blocks like it that were not explored; the weighted confusion counts are then
unbiased estimates of the counts over every event, and precision and recall
their ratios: consistent, with a bias of the order of 1/(explored rows) (a
ratio of two unbiased sums is not itself unbiased). Blocks that were
not let through are left out (their label is unknown); blocks no share could
explore (propensity 0: a deny rule, or a segment at share 0) cannot be
estimated and are counted as `unexplorable`.

`DecisionStats` is a sum, merged by adding; a correction takes its old
label back with `sign=-1`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np


@dataclass
class DecisionStats:
    tp: float = 0.0  # naive: labeled rows, each counted once, the would-be decision against the label
    fp: float = 0.0
    fn: float = 0.0
    tn: float = 0.0
    w_tp: float = 0.0  # weighted: let-through rows, each counted 1/propensity times
    w_fp: float = 0.0
    w_fn: float = 0.0
    w_tn: float = 0.0
    explored: float = 0.0  # labeled rows exploration let through
    censored: float = 0.0  # labeled rows that were blocked (a label came anyway): not in the weighted counts
    unexplorable: float = 0.0  # labeled would-be blocks with propensity 0

    def add(self, would_block: bool, explored: bool, propensity: float, label: float, sign: int = 1) -> None:
        y = label >= 0.5
        if would_block:
            self.tp += sign * y
            self.fp += sign * (not y)
        else:
            self.fn += sign * y
            self.tn += sign * (not y)
        if propensity <= 0:
            self.unexplorable += sign
        if would_block and not explored:
            self.censored += sign
            return
        self.explored += sign * explored
        weight = sign / propensity
        if would_block:
            self.w_tp += weight * y
            self.w_fp += weight * (not y)
        else:
            self.w_fn += weight * y
            self.w_tn += weight * (not y)

    def merge(self, other: DecisionStats) -> DecisionStats:
        return DecisionStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def values(self) -> dict:
        """Naive and weighted precision and recall (NaN where undefined), and the counts behind them."""
        weighted = (self.w_tp, self.w_fp, self.w_fn)
        # Without one explored row, a weighted count of blocks is not an estimate but a blind spot.
        blind = self.explored <= 0 and self.censored + self.unexplorable > 0
        return {
            "naive": _precision_recall(self.tp, self.fp, self.fn),
            "ipw": _precision_recall(math.nan, math.nan, math.nan) if blind else _precision_recall(*weighted),
            "labeled": int(self.tp + self.fp + self.fn + self.tn),
            "explored": int(self.explored),
            "censored": int(self.censored),
            "unexplorable": int(self.unexplorable),
            "estimated_caught": self.w_tp,
            "estimated_blocks": self.w_tp + self.w_fp,
            "estimated_positives": self.w_tp + self.w_fn,
        }


def _precision_recall(tp: float, fp: float, fn: float) -> dict:
    return {
        "precision": tp / (tp + fp) if tp + fp > 0 else math.nan,
        "recall": tp / (tp + fn) if tp + fn > 0 else math.nan,
    }


def estimate(would_block, explored, propensity, label) -> dict:
    """`DecisionStats.values` of arrays (one entry per labeled row), vectorised for datasets and simulations."""
    would_block, explored = np.asarray(would_block, dtype=bool), np.asarray(explored, dtype=bool)
    propensity, y = np.asarray(propensity, dtype=np.float64), np.asarray(label, dtype=np.float64) >= 0.5
    through = ~would_block | explored
    weight = np.where(through, 1.0 / np.where(propensity > 0, propensity, np.inf), 0.0)
    stats = DecisionStats(
        tp=float(np.sum(would_block & y)), fp=float(np.sum(would_block & ~y)),
        fn=float(np.sum(~would_block & y)), tn=float(np.sum(~would_block & ~y)),
        w_tp=float(np.sum(weight * (would_block & y))), w_fp=float(np.sum(weight * (would_block & ~y))),
        w_fn=float(np.sum(weight * (~would_block & y))), w_tn=float(np.sum(weight * (~would_block & ~y))),
        explored=float(np.sum(explored & would_block)), censored=float(np.sum(would_block & ~explored)),
        unexplorable=float(np.sum(propensity <= 0)),
    )
    return stats.values()


def training_weights(would_block, explored, propensity) -> np.ndarray:
    """Per labeled row, its weight in training: 1/propensity if it was let through, 0 for a block that was not.

    Rows without exploration fields (propensity NaN) weigh 1: their deployment did not explore.
    """
    would_block = np.asarray(would_block, dtype=bool)
    explored = np.asarray(explored, dtype=bool)
    propensity = np.asarray(propensity, dtype=np.float64)
    logged = ~np.isnan(propensity)
    through = ~would_block | explored
    weight = np.ones(len(propensity))
    weight[logged & ~through] = 0.0
    shown = logged & through & (propensity > 0)
    weight[shown] = 1.0 / propensity[shown]
    return weight
