"""Precision and recall of blocking decisions: the weighted estimate is unbiased where the naive one is not.

A simulated population where the truth is known for every event: a model's
blocks, their labels, and exploration at different shares per segment; only
what was let through is labeled, as in fraud.
"""

from __future__ import annotations

import math

import numpy as np

from stream.lifecycle.ipw import DecisionStats, estimate, training_weights
from stream.lifecycle.online_eval import OnlineEvaluation
from stream.serving import explore

SHARES = {"low": 0.2, "high": 0.02}  # cheap segments explored more


def _population(rng, n: int = 20_000):
    """Events with a segment, a true label and a would-be block; precision differs by segment on purpose."""
    segment = np.where(rng.random(n) < 0.5, "low", "high")
    fraud = rng.random(n) < np.where(segment == "low", 0.02, 0.05)
    # The model blocks 70% of fraud and 1% of the rest; in "low" it is less precise.
    block = np.where(fraud, rng.random(n) < 0.7, rng.random(n) < np.where(segment == "low", 0.02, 0.005))
    return segment, fraud, block


def _truth(fraud, block) -> tuple[float, float]:
    tp = np.sum(block & fraud)
    return tp / block.sum(), tp / fraud.sum()


def _observe(rng, segment, fraud, block, seed: int):
    """What the label join sees: (would_block, explored, propensity, label) of the rows let through."""
    config = {"share": 0.0, "seed": seed, "segment": {"field": "s", "share": SHARES}}
    ids = [f"{seed}-{i}" for i in range(len(segment))]
    out = explore.explore(config, [{"s": s} for s in segment], ids, block.tolist(), [None] * len(ids))
    explored = np.array([o.explored for o in out])
    propensity = np.array([o.propensity for o in out])
    through = ~block | explored
    return block[through], explored[through], propensity[through], fraud[through].astype(float)


def test_ipw_is_unbiased_and_naive_is_not_over_many_simulated_periods():
    rng = np.random.default_rng(11)
    segment, fraud, block = _population(rng)
    true_precision, true_recall = _truth(fraud, block)
    truth = {"estimated_caught": np.sum(block & fraud), "estimated_blocks": block.sum(), "estimated_positives": fraud.sum()}
    runs = [estimate(*_observe(rng, segment, fraud, block, seed)) for seed in range(300)]  # 300 seeds: the
    # estimators' sampling distributions over the same events
    for name, true in truth.items():  # the weighted counts: unbiased
        values = np.array([run[name] for run in runs])
        assert abs(values.mean() - true) < 4 * values.std(ddof=1) / math.sqrt(len(values)), (name, values.mean(), true)
    naive = np.array([(run["naive"]["precision"], run["naive"]["recall"]) for run in runs])
    ipw = np.array([(run["ipw"]["precision"], run["ipw"]["recall"]) for run in runs])
    # Their ratios: consistent, within a small-sample bias of the order of 1/explored rows (~75 a run here).
    assert abs(ipw[:, 0].mean() - true_precision) < 0.03 and abs(ipw[:, 1].mean() - true_recall) < 0.03
    # Naive: recall sees a block only where it was explored; precision over-weights the "low" segment.
    assert naive[:, 1].mean() < true_recall / 2
    naive_se = naive[:, 0].std(ddof=1) / math.sqrt(len(naive))
    assert abs(naive[:, 0].mean() - true_precision) > 0.1 and abs(naive[:, 0].mean() - true_precision) > 10 * naive_se


def test_the_streaming_sums_equal_the_arrays_merge_and_take_corrections_back():
    rng = np.random.default_rng(3)
    segment, fraud, block = _population(rng, 5000)
    rows = list(zip(*_observe(rng, segment, fraud, block, 1)))
    one, a, b = DecisionStats(), DecisionStats(), DecisionStats()
    for i, row in enumerate(rows):
        one.add(*row)
        (a if i % 2 else b).add(*row)
    assert one.values() == estimate(*map(np.array, zip(*rows)))
    assert a.merge(b).values() == one.values()
    corrected = DecisionStats()
    for row in rows:
        corrected.add(*row)
    corrected.add(*rows[0][:3], rows[0][3], sign=-1)  # a correction takes the old label back ...
    corrected.add(*rows[0][:3], 1.0 - rows[0][3])  # ... and adds the new one
    flipped = [(*rows[0][:3], 1.0 - rows[0][3]), *rows[1:]]
    assert corrected.values() == estimate(*map(np.array, zip(*flipped)))


def test_without_exploration_there_is_no_weighted_estimate_only_the_naive_one():
    stats = DecisionStats()
    stats.add(True, False, 0.0, 1.0)  # a block that got a label anyway
    stats.add(False, False, 1.0, 1.0)
    values = stats.values()
    assert math.isnan(values["ipw"]["precision"]) and math.isnan(values["ipw"]["recall"])
    assert values["naive"] == {"precision": 1.0, "recall": 0.5}
    assert values["censored"] == 1 and values["unexplorable"] == 1


def test_online_evaluation_reports_naive_and_weighted_decisions_per_version():
    evaluation = OnlineEvaluation("id")
    base = {"kind": "joined", "revision": 1, "model_version": "v1", "route": "champion", "score": 0.9,
            "scores": {"v1": 0.9}, "threshold": 0.5, "features": {"f": 1.0}, "event_time": "2026-11-01T00:00:00.000Z",
            "label_time": "2026-11-02T00:00:00.000Z", "label_source": "label"}
    rows = [(True, True, 0.1, 1), (True, True, 0.1, 0), (False, False, 1.0, 1), (False, False, 1.0, 0)]
    for i, (would_block, explored, p, label) in enumerate(rows):
        evaluation.add_labeled({**base, "id": f"e{i}", "would_block": would_block, "explored": explored,
                                "propensity": p, "label": label, "decision": not explored and would_block})
    evaluation.add_labeled({**base, "id": "old", "label": 1})  # served without exploration: not a decision row
    (entry,) = evaluation.report()
    decisions = entry["decisions"]
    assert decisions["naive"] == {"precision": 0.5, "recall": 0.5}
    assert decisions["ipw"] == {"precision": 0.5, "recall": 10 / 11}
    assert decisions["explored"] == 2 and decisions["labeled"] == 4
    assert evaluation.combined_decisions("v1").values() == decisions


def test_training_weights_stand_explored_blocks_for_the_blocks_like_them():
    weights = training_weights([True, True, False, True, False], [True, False, False, True, False],
                               [0.05, 0.05, 1.0, 0.0, np.nan])
    assert weights.tolist() == [20.0, 0.0, 1.0, 1.0, 1.0]
