"""Routing, shadows, fallback chains, business rules and reason codes, on real LightGBM models."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from stream.serving import rules as business
from stream.serving.deployment import Deployment, DeploymentError, entity_buckets, first, routes
from stream.serving.model import Model
from stream.serving.reasons import PathAttribution, sampled, top_k
from stream.serving.scorer import Serving, score

NAMES = [f"f{i}" for i in range(6)]


def _model(version: str, seed: int, threshold: float = 0.5, trees: int = 20) -> Model:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, len(NAMES)))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=len(x)) > 0.8).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "num_threads": 1, "seed": seed}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=NAMES), trees)
    return Model(version, tuple(NAMES), threshold, {}, booster)


class Raising(Model):
    def predict(self, matrix):
        raise RuntimeError("model exploded")


@pytest.fixture(scope="module")
def models():
    return {"v1": _model("v1", 1), "v2": _model("v2", 2), "v3": _model("v3", 3, trees=5)}


def _batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(n, len(NAMES)))
    records = [{"card_id": f"c{i % 200}", "id": f"e{i}", "channel": "online" if i % 3 else "pos"} for i in range(n)]
    return matrix, records, [r["card_id"] for r in records], [r["id"] for r in records]


def test_shadow_scores_every_event_with_every_version_and_publishes_the_champion(models):
    matrix, records, keys, ids = _batch(300)
    dep = Deployment(seq=1, champion="v1", mode="shadow", challengers=("v2", "v3"))
    out = score(Serving(dep, models), matrix, records, keys, ids, [None] * 300)
    assert out.versions == ["v1"] * 300 and out.routes == ["champion"] * 300
    for version in ("v1", "v2", "v3"):
        expected = models[version].predict(matrix)
        np.testing.assert_array_equal([s[version] for s in out.all_scores], expected)
    np.testing.assert_array_equal(out.scores, models["v1"].predict(matrix))
    assert out.decisions == (models["v1"].predict(matrix) >= 0.5).tolist()


def test_canary_share_is_within_two_points_over_20000_entities_and_stable_per_entity():
    keys = [f"card-{i:06d}" for i in range(20_000)]
    for share in (0.05, 0.25, 0.5):
        dep = Deployment(seq=1, champion="v1", mode="canary", challengers=("v2",), share=share)
        routed = routes(dep, keys)
        observed = routed.count("canary") / len(keys)
        assert abs(observed - share) <= 0.02, (share, observed)
        # The same entity always gets the same route, whatever else is in its batch.
        again = routes(dep, list(reversed(keys)))[::-1]
        assert again == routed
    # A larger share keeps every entity that was already on the canary there (ramping only adds entities).
    small = routes(Deployment(seq=1, champion="v1", mode="canary", challengers=("v2",), share=0.05), keys)
    large = routes(Deployment(seq=2, champion="v1", mode="canary", challengers=("v2",), share=0.25), keys)
    assert all(b == "canary" for a, b in zip(small, large) if a == "canary")


def test_ab_split_names_both_arms_and_scores_by_arm(models):
    matrix, records, keys, ids = _batch(400)
    dep = Deployment(seq=1, champion="v1", mode="ab", challengers=("v2",), share=0.5)
    out = score(Serving(dep, models), matrix, records, keys, ids, [None] * 400)
    assert set(out.routes) == {"ab:A", "ab:B"}
    for i, route in enumerate(out.routes):
        version = "v2" if route == "ab:B" else "v1"
        assert out.versions[i] == version
        assert out.scores[i] == pytest.approx(models[version].predict(matrix[i : i + 1])[0], abs=1e-12)
    assert (entity_buckets(["x"]) == entity_buckets(["x"])).all()


def test_fallback_chain_model_error_then_version_then_rules(models):
    matrix, records, keys, ids = _batch(50)
    broken = Raising("bad", tuple(NAMES), 0.5, {}, None)
    rules = {"fallback": [{"name": "big_f0", "field": "f0", "above": 1.0, "decision": True}]}
    serving = Serving(Deployment(seq=1, champion="bad", fallback=("v3", "rules"), rules=rules), {**models, "bad": broken})
    out = score(serving, matrix, records, keys, ids, [None] * 50)
    assert out.fallback == ["model_error"] * 50 and "bad" in out.errors
    assert out.versions == ["v3"] * 50
    np.testing.assert_allclose(out.scores, models["v3"].predict(matrix))
    # Without a working fallback model, rules decide, and the score is null rather than invented.
    serving = Serving(Deployment(seq=1, champion="bad", fallback=("rules",), rules=rules), {"bad": broken})
    out = score(serving, matrix, records, keys, ids, [None] * 50)
    assert out.scores == [None] * 50 and out.versions == [None] * 50
    assert out.decisions == (matrix[:, 0] > 1.0).tolist()
    assert set(out.rule) == {"fallback:big_f0", "fallback_default"}
    # With no rules step nothing can answer: reported, not scored.
    serving = Serving(Deployment(seq=1, champion="bad", fallback=("v3-missing-too",)), {"bad": broken, "v3-missing-too": broken})
    out = score(serving, matrix, records, keys, ids, [None] * 50)
    assert len(out.unanswered) == 50


def test_store_problem_goes_to_the_chain_or_is_named_without_one(models):
    matrix, records, keys, ids = _batch(20)
    problems = ["online_store_unavailable"] * 10 + [None] * 10
    out = score(Serving(Deployment(seq=1, champion="v1", fallback=("v3",)), models), matrix, records, keys, ids, problems)
    assert out.versions == ["v3"] * 10 + ["v1"] * 10
    assert out.fallback == problems
    out = score(Serving(first("v1"), models), matrix, records, keys, ids, problems)
    assert out.versions == ["v1"] * 20 and out.fallback == problems


def test_business_rules_clip_segment_threshold_allow_and_deny():
    records = [{"channel": "online", "card": "a"}, {"channel": "pos", "card": "b"}, {"channel": "pos", "card": "deny-me"},
               {"channel": "online", "card": "ok"}]
    rules = {"clip": [0.0, 0.9], "threshold": {"field": "channel", "values": {"online": 0.2}},
             "deny": {"field": "card", "values": ["deny-me"]}, "allow": {"field": "card", "values": ["ok"]}}
    scores, decisions, named = business.decide(rules, records, np.array([0.3, 0.95, 0.1, 0.99]), np.full(4, 0.5))
    assert scores.tolist() == [0.3, 0.9, 0.1, 0.9]
    assert decisions.tolist() == [True, True, True, False]
    assert named == ["threshold:channel=online", "clip", "deny:card", "allow:card"]
    with pytest.raises(DeploymentError):
        business.check({"thresholds": {}})


def test_path_attribution_adds_up_to_the_raw_score_and_tracks_treeshap(models):
    booster = models["v1"].booster
    matrix, *_ = _batch(300, seed=5)
    matrix[::7, 2] = np.nan
    attribution = PathAttribution(booster)
    contributions = attribution.contributions(matrix)
    raw = booster.predict(matrix, raw_score=True)
    np.testing.assert_allclose(contributions.sum(axis=1) + attribution.bias, raw, atol=1e-9)
    shap = booster.predict(matrix, pred_contrib=True)[:, :-1]
    top1 = np.mean(np.argmax(np.abs(contributions), 1) == np.argmax(np.abs(shap), 1))
    assert top1 > 0.8  # f0 dominates the model; both methods must find it
    top = top_k(attribution.names, contributions[:2], 2)
    assert len(top[0]) == 2 and abs(top[0][0][1]) >= abs(top[0][1][1])


def test_reason_codes_for_every_positive_and_a_stable_sample_of_the_rest(models):
    matrix, records, keys, ids = _batch(400)
    serving = Serving(first("v1"), models, reason_share=0.25, reason_k=3)
    out = score(serving, matrix, records, keys, ids, [None] * 400)
    chosen = sampled(ids, 0.25)
    for i, reasons in enumerate(out.reasons):
        assert (reasons is not None) == (out.decisions[i] or bool(chosen[i]))
    assert 0.15 < chosen.mean() < 0.35
    assert (sampled(ids, 0.25) == chosen).all()


def test_deployment_round_trips_and_rejects_nonsense():
    dep = Deployment(seq=3, champion="v1", mode="canary", challengers=("v2",), share=0.05, ramp=(0.05, 0.5, 1.0),
                     step_after_events=100, fallback=("v0", "rules"), rules={"clip": [0, 1]})
    assert Deployment.from_json(dep.to_json()) == dep
    for bad in (dict(mode="canary"), dict(mode="nope"), dict(share=2.0), dict(fallback=("rules", "v2")),
                dict(challengers=("v1",), mode="shadow")):
        with pytest.raises(DeploymentError):
            Deployment(seq=1, champion="v1", **bad)
    with pytest.raises(DeploymentError):
        Deployment.from_json(b"{not json")
