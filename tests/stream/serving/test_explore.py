"""Exploration: which would-be blocks are let through is a function of (seed, event id), at the declared shares."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from stream.pipeline.records import exploration
from stream.serving import explore
from stream.serving.deployment import Deployment, DeploymentError

N = 20_000


def _ids(n: int, prefix: str = "e") -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(n)]


def _within_binomial(hits: int, n: int, p: float, z: float = 4.0) -> bool:
    """`hits` of `n` draws at probability `p`, within z standard deviations (4: a false failure in ~1/16,000 runs)."""
    return abs(hits - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


def test_the_same_event_is_explored_alike_in_any_batch_and_any_order():
    config = {"share": 0.1, "seed": 3}
    ids = _ids(4000)
    records = [{"amount": i % 700} for i in range(4000)]
    decisions, rules = [True] * 4000, [None] * 4000
    whole = explore.explore(config, records, ids, decisions, rules)
    halves = explore.explore(config, records[:1500], ids[:1500], decisions[:1500], rules[:1500])
    halves += explore.explore(config, records[1500:], ids[1500:], decisions[1500:], rules[1500:])
    order = np.random.default_rng(0).permutation(4000)
    shuffled = explore.explore(config, [records[i] for i in order], [ids[i] for i in order], decisions, rules)
    assert whole == halves
    assert [shuffled[j] for j in np.argsort(order)] == whole
    other_seed = explore.explore({"share": 0.1, "seed": 4}, records, ids, decisions, rules)
    assert [o.explored for o in other_seed] != [o.explored for o in whole]


def test_only_blocks_are_explored_at_the_share_and_their_propensity_is_logged():
    ids = _ids(N)
    decisions = [i % 2 == 0 for i in range(N)]  # every other event would be blocked
    out = explore.explore({"share": 0.05, "seed": 1}, [{}] * N, ids, decisions, [None] * N)
    blocked = [o for o in out if o.would_block]
    assert [o.would_block for o in out] == decisions
    assert not any(o.explored for o in out if not o.would_block)
    assert all(o.propensity == 1.0 for o in out if not o.would_block)
    assert all(o.propensity == 0.05 for o in blocked)
    assert _within_binomial(sum(o.explored for o in blocked), len(blocked), 0.05)


def test_deny_and_fallback_rules_are_never_explored():
    ids = _ids(2000)
    rules = ["deny:card_id" if i % 3 == 0 else ("fallback:big" if i % 3 == 1 else "threshold:channel=online")
             for i in range(2000)]
    out = explore.explore({"share": 1.0}, [{}] * 2000, ids, [True] * 2000, rules)
    assert [o.explored for o in out] == [i % 3 == 2 for i in range(2000)]
    assert [o.propensity for o in out] == [1.0 if i % 3 == 2 else 0.0 for i in range(2000)]


def test_per_segment_shares_by_value_and_by_band():
    ids = _ids(3 * N)
    by_value = {"share": 0.02, "seed": 5, "segment": {"field": "mcc", "share": {"grocery": 0.2, "jewelry": 0.0}}}
    records = [{"mcc": ("grocery", "jewelry", "travel")[i % 3]} for i in range(3 * N)]
    out = explore.explore(by_value, records, ids, [True] * len(ids), [None] * len(ids))
    for k, (name, share) in enumerate((("grocery", 0.2), ("jewelry", 0.0), ("travel", 0.02))):
        mine = out[k::3]
        assert {o.propensity for o in mine} == {share}, name
        assert _within_binomial(sum(o.explored for o in mine), len(mine), share), name
    bands = {"share": 0.1, "segment": {"field": "amount", "bands": [50, 500], "share": {"<50": 0.3, ">=500": 0.0}}}
    amounts = [10.0, 49.99, 50, 499, 500, 10_000, None, "x"]
    segments = [explore.segment_of(bands["segment"], {"amount": a}) for a in amounts]
    assert segments == ["<50", "<50", "[50,500)", "[50,500)", ">=500", ">=500", "missing", "missing"]
    shares = explore.shares(bands, [{"amount": a} for a in amounts]).tolist()
    assert shares == [0.3, 0.3, 0.1, 0.1, 0.0, 0.0, 0.1, 0.1]


def test_configs_that_cannot_apply_are_refused_and_off_is_the_default():
    assert not explore.active(Deployment(seq=1, champion="v1").exploration)
    assert not explore.active({"share": 0.0})
    assert explore.active({"share": 0.0, "segment": {"field": "mcc", "share": {"grocery": 0.1}}})
    for bad in ({"share": 1.5}, {"share": -0.1}, {"sharre": 0.1}, {"share": 0.1, "segment": {"bands": [1]}},
                {"share": 0.1, "segment": {"field": "amount", "bands": [500, 50]}}, {"share": 0.1, "seed": "x"},
                {"share": 0.1, "segment": {"field": "mcc", "share": {"a": 2}}}):
        with pytest.raises(DeploymentError):
            explore.check(bad)
    with pytest.raises(DeploymentError):
        Deployment(seq=1, champion="v1", exploration=[0.1])
    record = Deployment(seq=2, champion="v1", exploration={"share": 0.02, "seed": 2})
    assert Deployment.from_json(record.to_json()) == record
    old = orjson.loads(Deployment(seq=1, champion="v1").to_json())
    del old["exploration"]  # a record written before exploration existed
    assert Deployment.from_json(orjson.dumps(old)).exploration == {}


def test_records_without_exploration_fields_read_as_not_explored():
    assert exploration({"decision": True}) == (True, False, 0.0)
    assert exploration({"decision": False}) == (False, False, 1.0)
    assert exploration({"decision": False, "explored": True, "propensity": 0.05, "would_block": True}) == (True, True, 0.05)
    assert exploration({"decision": True, "explored": False, "propensity": 0.05}) == (True, False, 0.05)


def test_the_scorer_lets_explored_blocks_through_and_keeps_the_model_s_decision_visible():
    import lightgbm as lgb

    from stream.serving.model import Model
    from stream.serving.scorer import Serving, score

    names = [f"f{i}" for i in range(4)]
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 4))
    y = (x[:, 0] > 1.0).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1, "seed": 1},
                        lgb.Dataset(x, y, feature_name=names), 10)
    model = Model("v1", tuple(names), 0.5, {}, booster)
    records = [{"card_id": f"c{i}", "id": f"e{i}"} for i in range(4000)]
    ids, keys = [r["id"] for r in records], [r["card_id"] for r in records]
    plain = score(Serving(Deployment(seq=1, champion="v1"), {"v1": model}), x, records, keys, ids, [None] * 4000)
    assert plain.exploration is None and all(a.exploration is None for a in plain.answers())
    dep = Deployment(seq=2, champion="v1", exploration={"share": 0.3, "seed": 9})
    out = score(Serving(dep, {"v1": model}), x, records, keys, ids, [None] * 4000)
    assert out.scores == plain.scores
    would = plain.decisions
    assert [o.would_block for o in out.exploration] == would
    explored = [o.explored for o in out.exploration]
    assert out.decisions == [w and not e for w, e in zip(would, explored)]
    assert any(explored) and _within_binomial(sum(explored), sum(would), 0.3)
    assert all(out.reasons[i] is not None for i in range(4000) if explored[i])  # explained like any block
