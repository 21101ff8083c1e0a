"""`sluice demo --loop`: the whole loop runs to a promotion, and its JSON line agrees with a recount from the topics."""

from __future__ import annotations

import json
import re
from datetime import datetime

import numpy as np
import orjson
import pandas as pd

from fraud_demo.loop import run_loop_demo
from stream.kafka.reader import read_topic
from stream.settings import Settings
from tests.conftest import ROOT

KEYS = [
    "events", "labels_joined", "drift_alert_after_events", "retrain_trigger", "candidate_version", "promoted",
    "auc_champion_before_drift", "auc_champion_after_drift", "auc_promoted_after_drift",
    "events_from_drift_to_promotion", "experiment_p_value", "false_promotions",
]


def _records(bootstrap: str, topic: str) -> list[dict]:
    return [orjson.loads(m.value()) for m in read_topic(bootstrap, topic, idle_s=2.0, timeout_s=120)]


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _rank_auc(labels, scores) -> float:
    """Mann-Whitney's AUC from average ranks (an independent recount of stream.lifecycle.evaluation.auc)."""
    labels, ranks = np.asarray(labels, dtype=bool), pd.Series(scores).rank().to_numpy()
    pos, neg = labels.sum(), (~labels).sum()
    return (ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg)


def test_the_loop_retrains_and_promotes_a_better_model_and_its_numbers_are_the_topics(broker, capsys):
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, repo_path=ROOT / "feature_repo")
    code = run_loop_demo(settings, events=None, rate=0, seed=7, cards=300)
    out = capsys.readouterr().out
    with capsys.disabled():
        print(out)  # the story, shown with -s or on failure
    line = json.loads(out.strip().splitlines()[-1])
    assert list(line) == KEYS
    assert code == 0
    assert line["promoted"] is True and line["false_promotions"] == 0
    assert line["auc_promoted_after_drift"] > line["auc_champion_after_drift"]
    assert line["auc_champion_after_drift"] < line["auc_champion_before_drift"]  # the drift hurt the champion
    assert 0 <= line["experiment_p_value"] < 0.05

    run, switch = re.search(r"topics (\S+)\.\*, events topic \S+; drift switch at (\S+)", out).groups()
    bootstrap, switch_ms = broker.bootstrap_servers, _ms(switch)
    log = {r["transaction_id"]: r for r in _records(bootstrap, f"{run}.prediction_log")}
    assert line["events"] == len(log) == sum(1 for _ in read_topic(bootstrap, run, idle_s=2.0, timeout_s=120))

    # The promotion, read as plain JSON from the deployments topic.
    deployments = _records(bootstrap, f"{run}.deployments")
    promoted = [d for d in deployments if (d.get("autopilot") or {}).get("stage") == "promoted"]
    assert len(promoted) == 1
    (record,) = promoted
    candidate = line["candidate_version"]
    assert record["champion"] == record["autopilot"]["candidate"] == candidate
    assert record["autopilot"]["trigger"] == line["retrain_trigger"]
    assert record["autopilot"]["experiment"]["p_value"] == line["experiment_p_value"]
    stages = [d["autopilot"]["stage"] for d in deployments if d.get("autopilot")]
    assert stages[-3:] == ["shadow", "canary", "promoted"]
    after = [r for r in log.values() if _ms(r["event_time"]) >= switch_ms]
    assert line["events_from_drift_to_promotion"] == sum(1 for r in after if r["deployment"] < record["seq"]) > 0

    # The labeled rows: joins counted, and the AUCs recounted on the same post-drift events.
    labeled = _records(bootstrap, f"{run}.labeled")
    assert line["labels_joined"] == len({r["transaction_id"] for r in labeled if r["kind"] == "joined"}) > 0
    rows: dict[str, dict] = {}
    for r in labeled:
        if "scores" in r:
            rows[r["transaction_id"]] = r
    old = record["autopilot"]["previous_champion"]
    both = [r for r in rows.values() if r.get("label") is not None and _ms(r["event_time"]) >= switch_ms
            and r["scores"].get(candidate) is not None and r["scores"].get(old) is not None]
    y = [r["label"] >= 0.5 for r in both]
    assert abs(_rank_auc(y, [r["scores"][candidate] for r in both]) - line["auc_promoted_after_drift"]) < 1e-3
    assert abs(_rank_auc(y, [r["scores"][old] for r in both]) - line["auc_champion_after_drift"]) < 1e-3
    # The monitor saw the drift: its first alert after the switch, in events after the switch.
    assert 0 < line["drift_alert_after_events"] <= len(after)
