"""Provisional or final: `sluice models show`, the worker's gauge and the status page say the same of a window.

The FeatureService here waits one day for labels (`sluice.label_window`),
not the tag's default of seven. Predictions three days old with labels
known now sit in a window that is final under one day and provisional
under seven: every reader must use the FeatureService's label window
(stream.lifecycle.online_eval.window_final).
"""

from __future__ import annotations

import json
import shutil
import time

import orjson
from prometheus_client import REGISTRY

from stream.cli.main import main
from stream.kafka.clients import make_producer
from stream.pipeline.events import iso_ms
from tests.stream.ui.records import labeled, prediction_logs

DAY_MS = 86_400_000


def _repo_with_label_window(trained_repo, path, window: str):
    from stream.feast import repo

    shutil.copytree(trained_repo["path"], path, ignore=shutil.ignore_patterns("registry.db"))
    definitions = next(p for p in path.glob("*.py") if '"sluice.label_window"' in p.read_text())
    text = definitions.read_text()
    assert '"sluice.label_window": "7d"' in text
    definitions.write_text(text.replace('"sluice.label_window": "7d"', f'"sluice.label_window": "{window}"'))
    repo.apply(path)
    return path


def _records(version: str):
    """Prediction-log and labeled records of predictions three days old, labeled now."""
    logs = prediction_logs(30, seed=8)
    then = iso_ms(int(time.time() * 1000) - 3 * DAY_MS)
    for r in logs:
        r["model_version"], r["route"], r["scores"], r["event_time"] = version, "champion", {version: r["score"]}, then
    written = []
    for key, value in labeled(logs)[0]:
        record = orjson.loads(value)
        if "event_time" in record:
            record["event_time"] = then  # the labeled record carries the prediction's event time
        written.append((key, record))
    return logs, written


def test_models_show_the_gauge_and_the_page_agree_on_final(broker, model_versions, trained_repo, unique, monkeypatch,
                                                            capsys, tmp_path):
    from features.feast_repo import load_plan, open_store
    from stream.lifecycle.online_eval import OnlineEvaluation
    from stream.settings import Settings
    from stream.worker.labels import join_config, publish

    models, v1, _ = model_versions
    path = _repo_with_label_window(trained_repo, tmp_path / "repo", "1d")
    logs, written = _records(v1)
    topics = {"SLUICE_PREDICTION_LOG_TOPIC": unique("plog"), "SLUICE_LABELED_TOPIC": unique("labeled")}
    for name, value in topics.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLUICE_REPO", str(path))

    # The worker: its label join's configuration and evaluation, and the gauge it publishes.
    plan = load_plan(open_store(path))
    config = join_config(Settings.from_env(repo_path=str(path)), plan)
    assert config.window_ms == DAY_MS
    evaluation = OnlineEvaluation(config.id_field, label_window_ms=config.window_ms)
    for r in logs:
        evaluation.add_prediction(r, dedupe=False)
    for _, record in written:
        evaluation.add_labeled(record, dedupe=False)
    publish(evaluation)
    gauge = REGISTRY.get_sample_value("sluice_online_window_provisional", {"version": v1, "route": "champion"})
    assert gauge == 0.0, "three-day-old predictions with a one-day label window: final"

    # `sluice models show`, from the topics.
    producer = make_producer(broker.bootstrap_servers)
    for r in logs:
        producer.produce(topics["SLUICE_PREDICTION_LOG_TOPIC"], orjson.dumps(r), r["transaction_id"].encode())
    for key, record in written:
        producer.produce(topics["SLUICE_LABELED_TOPIC"], orjson.dumps(record), key)
    assert producer.flush(30) == 0
    del producer
    common = ["--model-dir", str(models), "--bootstrap-servers", broker.bootstrap_servers]
    capsys.readouterr()
    assert main(["models", "show", v1, *common, "--json"]) == 0
    champion = json.loads(capsys.readouterr().out)["online"]["champion"]
    assert champion["latest"]["provisional"] is False and champion["matured"] == champion["latest"]
    assert champion["latest"]["provisional"] == bool(gauge)
    assert main(["models", "show", v1, *common]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("online champion")]
    assert len(lines) == 2 and all(", final, window " in line for line in lines), lines

    # The page shows this gauge as "final" or "provisional": tests/stream/ui/test_status_page.py reads it off the page.
