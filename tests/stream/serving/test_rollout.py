"""The rollout policy: ramp steps, guardrail rollbacks and the A/B sample-ratio check."""

from __future__ import annotations

import numpy as np
from scipy import stats

from stream.serving.deployment import Deployment, Guardrails, routes
from stream.serving.rollout import RolloutPolicy, psi, srm_p_value


def _records(dep: Deployment, n: int, *, fallback_every: int = 0, score_ms: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    keys = [f"card-{i}" for i in rng.integers(0, 5000, size=n)]
    out = []
    for i, (key, route) in enumerate(zip(keys, routes(dep, keys))):
        fallback = "online_store_slow" if fallback_every and i % fallback_every == 0 else None
        score = float(rng.random())
        out.append({"deployment": dep.seq, "route": route, "entity": {"card_id": key}, "score": score,
                    "scores": {"v1": score, "v2": score},
                    "fallback": fallback, "latency_ms": {"score": score_ms}})
    return out


CANARY = Deployment(seq=4, champion="v1", mode="canary", challengers=("v2",), share=0.1, ramp=(0.1, 0.5, 1.0),
                    step_after_events=200, guardrails=Guardrails(min_events=100, max_fallback_rate=0.05))


def test_ramp_steps_after_the_declared_canary_events():
    policy = RolloutPolicy("card_id")
    policy.observe(CANARY, _records(CANARY, 1000), 0.0)  # ~100 canary events
    assert policy.decide(CANARY, 1.0) is None
    policy.observe(CANARY, _records(CANARY, 2000, seed=1), 1.0)
    step = policy.decide(CANARY, 2.0)
    assert step is not None and step.seq == 5 and step.step == 1 and step.share == 0.5 and step.by == "ramp"
    # Records of another deployment do not count toward this one.
    policy = RolloutPolicy("card_id")
    policy.observe(CANARY, _records(CANARY.but(seq=3), 5000), 0.0)
    assert policy.decide(CANARY, 1.0) is None


def test_a_guardrail_breach_rolls_the_canary_back_with_its_reason():
    policy = RolloutPolicy("card_id")
    policy.observe(CANARY, _records(CANARY, 3000, fallback_every=10), 0.0)
    back = policy.decide(CANARY, 1.0)
    assert back is not None and back.mode == "champion" and back.champion == "v1" and back.challengers == ()
    assert back.by == "guardrail" and "fallback rate" in back.reason
    slow = CANARY.but(guardrails=Guardrails(min_events=100, max_score_ms_p99=5.0))
    policy = RolloutPolicy("card_id")
    policy.observe(slow, _records(slow, 3000, score_ms=9.0), 0.0)
    assert "scoring time" in policy.decide(slow, 1.0).reason


def test_score_psi_guardrail_uses_the_reference_stored_with_the_model():
    rng = np.random.default_rng(3)
    ref_scores = rng.beta(1, 20, size=5000)
    edges = np.unique(np.quantile(ref_scores, np.linspace(0.1, 0.9, 9)))
    counts = np.bincount(np.searchsorted(edges, ref_scores, side="right"), minlength=len(edges) + 1)
    reference = {"edges": edges.tolist(), "counts": counts.tolist()}
    assert psi(reference, rng.beta(1, 20, size=5000)) < 0.02
    assert psi(reference, rng.beta(5, 5, size=5000)) > 1.0
    policy = RolloutPolicy("card_id", reference_of=lambda v: reference)
    policy.observe(CANARY, _records(CANARY, 3000), 0.0)  # uniform scores: far from beta(1, 20)
    assert "score PSI" in policy.decide(CANARY, 1.0).reason


def test_sample_ratio_check_agrees_with_scipy_and_flags_a_broken_split():
    for a, b, share in ((480, 520, 0.5), (900, 100, 0.1), (700, 300, 0.5)):
        expected = stats.chisquare([a, b], [(a + b) * (1 - share), (a + b) * share]).pvalue
        assert abs(srm_p_value(a, b, share) - expected) < 1e-9
    ab = Deployment(seq=2, champion="v1", mode="ab", challengers=("v2",), share=0.5)
    policy = RolloutPolicy("card_id")
    policy.observe(ab, _records(ab, 20000), 0.0)
    assert policy.sample_ratio(ab)["mismatch"] is False
    # The workers route with 0.5, but the deployment claims 0.2: a mismatch.
    claimed = ab.but(seq=3, share=0.2)
    policy.observe(claimed, [], 0.0)
    assert policy.sample_ratio(claimed) is None  # a new deployment starts counting afresh
    policy.observe(claimed, [dict(r, deployment=claimed.seq) for r in _records(ab, 20000)], 0.0)
    assert policy.sample_ratio(claimed)["mismatch"] is True
