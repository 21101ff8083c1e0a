"""`sluice deploy` and `sluice models promote` write deployment records that the topic's history keeps."""

from __future__ import annotations

import json

import pytest

from stream.cli.main import main
from stream.kafka.control import history
from stream.serving.deployment import Deployment


@pytest.fixture
def registry(model_versions):
    return model_versions


def _deploy(broker, models, topic, *args) -> int:
    common = ["--bootstrap-servers", broker.bootstrap_servers, "--model-dir", str(models)]
    return main(["deploy", *args, *common])


def test_every_deploy_action_is_a_record_with_its_reason(broker, registry, unique, monkeypatch, capsys, tmp_path):
    models, v1, v2 = registry
    topic = unique("deploy")
    monkeypatch.setenv("SLUICE_DEPLOYMENTS_TOPIC", topic)
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"clip": [0.0, 0.99], "deny": {"field": "card_id", "values": ["card-000001"]}}))
    assert _deploy(broker, models, topic, "shadow", v2, "--fallback", "rules", "--rules", str(rules)) == 0
    assert _deploy(broker, models, topic, "canary", v2, "--ramp", "0.05,0.25,1", "--step-after", "500",
                   "--max-fallback-rate", "0.02") == 0
    assert _deploy(broker, models, topic, "ab", v2, "--split", "0.3", "--reason", "pricing test") == 0
    assert _deploy(broker, models, topic, "champion", v2) == 0
    records = history(broker.bootstrap_servers, topic, Deployment.from_json)
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert [r.mode for r in records] == ["shadow", "canary", "ab", "champion"]
    shadow, canary, ab, champion = records
    assert shadow.champion == v1 and shadow.challengers == (v2,) and shadow.fallback == ("rules",)
    assert canary.ramp == (0.05, 0.25, 1.0) and canary.share == 0.05 and canary.step_after_events == 500
    assert canary.guardrails.max_fallback_rate == 0.02
    assert canary.rules == shadow.rules and canary.fallback == ("rules",)  # carried over
    assert ab.share == 0.3 and ab.reason == "pricing test"
    assert champion.champion == v2 and champion.challengers == ()
    capsys.readouterr()
    assert _deploy(broker, models, topic, "history", "--json") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4]
    assert _deploy(broker, models, topic, "show") == 0
    assert "#4" in capsys.readouterr().out


def test_deploy_refuses_a_version_the_registry_does_not_have(broker, registry, unique, monkeypatch, capsys):
    models, _, _ = registry
    topic = unique("deploy")
    monkeypatch.setenv("SLUICE_DEPLOYMENTS_TOPIC", topic)
    assert _deploy(broker, models, topic, "canary", "v-nope") == 2
    assert "not in the registry" in capsys.readouterr().err
    assert history(broker.bootstrap_servers, topic, Deployment.from_json) == []


def test_models_promote_moves_the_alias_and_tells_the_workers(broker, registry, unique, monkeypatch):
    models, v1, v2 = registry
    topic = unique("deploy")
    monkeypatch.setenv("SLUICE_DEPLOYMENTS_TOPIC", topic)
    common = ["--model-dir", str(models), "--bootstrap-servers", broker.bootstrap_servers]
    assert main(["models", "promote", v2, "--reason", "better recall", *common]) == 0
    assert (models / "champion").read_text().strip() == v2
    assert main(["models", "rollback", *common]) == 0
    assert (models / "champion").read_text().strip() == v1
    records = history(broker.bootstrap_servers, topic, Deployment.from_json)
    assert [(r.seq, r.champion, r.by) for r in records] == [(1, v2, "sluice models"), (2, v1, "sluice models")]
    assert "better recall" in records[0].reason


def test_models_show_reports_the_online_evaluation_from_the_topics(broker, registry, trained_repo, unique, monkeypatch, capsys):
    import orjson

    from stream.kafka.clients import make_producer
    from tests.stream.ui.records import labeled, prediction_logs

    models, v1, _ = registry
    logs = prediction_logs(60, seed=3)
    for r in logs:  # every record served by this registry's champion
        r["model_version"], r["route"], r["scores"] = v1, "champion", {v1: r["score"]}
    rows, final = labeled(logs)
    topics = {"SLUICE_PREDICTION_LOG_TOPIC": unique("plog"), "SLUICE_LABELED_TOPIC": unique("labeled")}
    for name, value in topics.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLUICE_REPO", str(trained_repo["path"]))
    producer = make_producer(broker.bootstrap_servers)
    for r in logs:
        producer.produce(topics["SLUICE_PREDICTION_LOG_TOPIC"], orjson.dumps(r), r["transaction_id"].encode())
    for key, value in rows:
        producer.produce(topics["SLUICE_LABELED_TOPIC"], value, key)
    assert producer.flush(30) == 0
    capsys.readouterr()
    assert main(["models", "show", v1, "--model-dir", str(models), "--bootstrap-servers", broker.bootstrap_servers,
                 "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    latest = shown["online"]["champion"]["latest"]
    assert latest["predictions"] == 60
    labelled = [event for event, (_, label, _) in final.items() if label is not None]
    assert latest["coverage"] == len(labelled) / 60


def test_exploration_is_recorded_carried_over_and_turned_off(broker, registry, unique, monkeypatch, capsys, tmp_path):
    models, v1, v2 = registry
    topic = unique("deploy")
    monkeypatch.setenv("SLUICE_DEPLOYMENTS_TOPIC", topic)
    config = tmp_path / "exploration.json"
    config.write_text(json.dumps({"share": 0.01, "segment": {"field": "amount", "bands": [500], "share": {">=500": 0}}}))
    assert _deploy(broker, models, topic, "champion", v1, "--explore", "0.02") == 0
    assert "exploring 0.02 of blocks" in capsys.readouterr().out
    assert _deploy(broker, models, topic, "shadow", v2) == 0
    assert _deploy(broker, models, topic, "champion", v1, "--explore-config", str(config)) == 0
    assert _deploy(broker, models, topic, "champion", v1, "--explore", "0") == 0
    config.write_text(json.dumps({"share": 2}))
    assert _deploy(broker, models, topic, "champion", v1, "--explore-config", str(config)) == 2
    assert "exploration share 2" in capsys.readouterr().err
    first, shadow, segmented, off = history(broker.bootstrap_servers, topic, Deployment.from_json)
    assert first.exploration == {"share": 0.02, "seed": 1}  # the seed: the record that turned it on
    assert shadow.exploration == first.exploration  # carried over, like the rules
    assert segmented.exploration == {"share": 0.01, "seed": 1,
                                     "segment": {"field": "amount", "bands": [500], "share": {">=500": 0}}}
    assert off.exploration == {}
