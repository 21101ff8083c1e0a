"""One owner of topic names: every process derives them from `AppTopics`, and the SLUICE_*_TOPIC variables reach all of them."""

from __future__ import annotations

import pytest

from stream.kafka.topics import ROLES, AppTopics
from stream.settings import Settings

RENAMED = {
    "SLUICE_PREDICTIONS_TOPIC": "p-renamed",
    "SLUICE_PREDICTION_LOG_TOPIC": "log-renamed",
    "SLUICE_DEPLOYMENTS_TOPIC": "deployments-renamed",
    "SLUICE_MONITORING_TOPIC": "monitoring-renamed",
    "SLUICE_LABELS_TOPIC": "labels-renamed",
    "SLUICE_LABELED_TOPIC": "labeled-renamed",
}


def _renamed(monkeypatch, unique) -> dict[str, str]:
    names = {var: unique(name) for var, name in RENAMED.items()}
    for var, name in names.items():
        monkeypatch.setenv(var, name)
    return names


def test_every_role_by_attribute_and_by_name(monkeypatch):
    for var, name in RENAMED.items():
        monkeypatch.setenv(var, name)
    topics = AppTopics.of(Settings.from_env(app_id="shop"), "orders", [("card_id",), ("merchant_id", "country")])
    assert (topics.events, topics.dlq, topics.late) == ("orders", "orders.dlq", "orders.late")
    assert (topics.predictions, topics.prediction_log, topics.monitoring) == ("p-renamed", "log-renamed", "monitoring-renamed")
    assert (topics.deployments, topics.labels, topics.labeled) == ("deployments-renamed", "labels-renamed", "labeled-renamed")
    assert topics.labels_dlq == "labels-renamed.dlq"
    assert topics.repartitions == ["orders", "shop-repartition-merchant_id-country"]
    assert topics.changelog("state-1") == "shop-state-1-changelog"
    assert {role: topics[role] for role in ROLES} == topics.by_role()
    assert topics["late"] == "orders.late"
    with pytest.raises(KeyError, match="no topic role 'lateness'"):
        topics["lateness"]
    # A worker started with topics.env() derives the same names.
    monkeypatch.delenv("SLUICE_PREDICTIONS_TOPIC")
    assert AppTopics.of(Settings.from_env(app_id="shop"), "orders").predictions == "predictions"
    for var, name in topics.env().items():
        monkeypatch.setenv(var, name)
    again = AppTopics.of(Settings.from_env(app_id="shop"), "orders", topics.stage_keys)
    assert again == topics


def test_the_worker_monitor_and_measuring_runs_honour_the_topic_variables(monkeypatch, broker, trained_repo, unique):
    from stream.services.monitor import MonitorLoop
    from stream.tools.process import run_topics
    from stream.worker.app import build_engine

    names = _renamed(monkeypatch, unique)
    settings = Settings.from_env(
        bootstrap_servers=broker.bootstrap_servers, repo_path=trained_repo["path"], model_dir=trained_repo["model_dir"],
        app_id=unique("topics"),
    )
    engine, _store = build_engine(settings)
    topics = engine.topics
    assert topics == AppTopics.for_plan(settings, engine.plan)
    assert (topics.predictions, topics.prediction_log) == (names["SLUICE_PREDICTIONS_TOPIC"], names["SLUICE_PREDICTION_LOG_TOPIC"])
    assert engine.repartition_topics == topics.repartitions
    assert topics["late"] == f"{trained_repo['topic']}.late"

    loop = MonitorLoop(settings, events_topic=topics.events)
    try:
        assert loop.topics == AppTopics.of(settings, topics.events)
        assert loop.monitoring_topic == names["SLUICE_MONITORING_TOPIC"]
        assert loop.deployments_topic == names["SLUICE_DEPLOYMENTS_TOPIC"]
        assert set(loop.roles) == {names["SLUICE_PREDICTION_LOG_TOPIC"], topics.dlq, topics.late}
    finally:
        loop.close()

    # Parity and chaos (whose audit reads what these name): the variables where set ...
    run = run_topics(engine.plan, "run-1")
    assert (run.predictions, run.prediction_log) == (names["SLUICE_PREDICTIONS_TOPIC"], names["SLUICE_PREDICTION_LOG_TOPIC"])
    assert run.repartitions == [topics.events, *(t.replace(settings.app_id, "run-1") for t in topics.repartitions[1:])]
    assert run.env()["SLUICE_MONITORING_TOPIC"] == names["SLUICE_MONITORING_TOPIC"]
    # ... else outputs of the run's own.
    monkeypatch.delenv("SLUICE_PREDICTIONS_TOPIC")
    monkeypatch.delenv("SLUICE_PREDICTION_LOG_TOPIC")
    run = run_topics(engine.plan, "run-2")
    assert (run.predictions, run.prediction_log) == ("run-2.predictions", "run-2.log")
