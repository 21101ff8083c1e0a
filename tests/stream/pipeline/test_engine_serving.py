"""The engine's scoring step under deployments: what each record says about what served it."""

from __future__ import annotations

import dataclasses

import numpy as np

from stream import metrics
from stream.pipeline.records import read_log, read_prediction
from stream.serving.deployment import Deployment
from stream.serving.scorer import Serving
from tests.stream.outcomes import assert_one_outcome_each, key_of, start


class FailingStore:
    """An online store that is down: every lookup raises, as a Redis client does."""

    def lookup(self, view, keys):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


def _run(trained_repo, make_engine, serving_of, **engine_kwargs):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=0.5)
    engine = pipe.engine
    model = engine.serving.champion
    engine.serving = serving_of(model)
    for payload in events:
        pipe.send(key_of(plan, payload), payload, t)
    pipe.run()
    assert_one_outcome_each(pipe)
    predictions = {o.key: read_prediction(o.value) for o in pipe.by_topic("predictions")}
    logs = {o.key: read_log(o.value) for o in pipe.by_topic("prediction_log")}
    assert predictions and predictions.keys() == logs.keys()
    return predictions, logs, model


def test_shadow_logs_every_version_and_publishes_the_champion(trained_repo, make_engine):
    def shadow(model):
        twin = dataclasses.replace(model, version="shadow-twin", threshold=0.0)
        return Serving(Deployment(seq=7, champion=model.version, mode="shadow", challengers=("shadow-twin",)),
                       {model.version: model, "shadow-twin": twin})

    predictions, logs, model = _run(trained_repo, make_engine, shadow)
    for key, log in logs.items():
        assert log["deployment"] == 7 and log["route"] == "champion"
        assert set(log["scores"]) == {model.version, "shadow-twin"}
        assert log["scores"]["shadow-twin"] == log["scores"][model.version] == log["score"]
        assert predictions[key]["model_version"] == model.version
        assert predictions[key]["decision"] == (log["score"] >= model.threshold)  # not the twin's threshold 0
        assert "scores" not in predictions[key]


def test_positive_decisions_carry_reason_codes_in_the_prediction_and_the_log(trained_repo, make_engine):
    cards = [f"card-{i:06d}" for i in range(0, 400, 2)]

    def deny_half(model):
        # Threshold above any score: the positives are exactly the deny-listed cards' events.
        rules = {"deny": {"field": "card_id", "values": cards}}
        never = dataclasses.replace(model, threshold=1.01)
        return Serving(Deployment(seq=1, champion=model.version, rules=rules), {model.version: never}, reason_k=3)

    predictions, logs, model = _run(trained_repo, make_engine, deny_half)
    positives = [k for k, p in predictions.items() if p["decision"]]
    assert 0 < len(positives) < len(predictions)
    for key, p in predictions.items():
        assert p["decision"] == (p["entity"]["card_id"] in cards)
        assert logs[key]["rule"] == ("deny:card_id" if p["decision"] else None)
        if p["decision"]:
            assert p["reasons"] == logs[key]["reasons"] and len(p["reasons"]) == 3
            assert all(name in model.features for name, _ in p["reasons"])
        else:
            assert "reasons" not in p and logs[key]["reasons"] is None


def test_an_unreachable_online_store_is_answered_by_the_fallback_chain_and_counted(trained_repo, make_engine):
    before = metrics.FALLBACKS.labels("online_store_unavailable")._value.get()

    def chain(model):
        backup = dataclasses.replace(model, version="backup")
        rules = {"fallback": [{"name": "big", "field": "amount", "above": 1e12, "decision": True}]}
        return Serving(Deployment(seq=2, champion=model.version, fallback=("backup", "rules"), rules=rules),
                       {model.version: model, "backup": backup})

    pipe, plan, events, t = start(trained_repo, make_engine, hours=0.5)
    engine = pipe.engine
    from stream.pipeline.vectors import BatchFeatures

    engine.batch = BatchFeatures(FailingStore(), retry_s=60)
    engine.serving = chain(engine.serving.champion)
    for payload in events:
        pipe.send(key_of(plan, payload), payload, t)
    pipe.run()
    assert_one_outcome_each(pipe)
    logs = [read_log(o.value) for o in pipe.by_topic("prediction_log")]
    assert logs and all(r["fallback"] == "online_store_unavailable" and r["model_version"] == "backup" for r in logs)
    assert all(set(r["batch_missing"]) == {v.name for v in plan.batch_views} for r in logs)
    batch_features = [f"{v.name}__{f}" for v in plan.batch_views for f in v.features]
    assert all(r["features"][name] is None for r in logs for name in batch_features)
    after = metrics.FALLBACKS.labels("online_store_unavailable")._value.get()
    assert after - before == len(logs)
    assert np.isfinite([r["score"] for r in logs]).all()
