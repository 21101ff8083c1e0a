"""`sluice experiment report --json` against the real broker, checked against a recomputation from the records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from stream.kafka.clients import make_producer
from stream.kafka.control import publish
from stream.lifecycle import experiments as ex
from stream.lifecycle import label_state as ls
from stream.lifecycle.labeled import labeled_record
from stream.serving.deployment import Deployment

START = datetime(2026, 11, 1, tzinfo=UTC)
NAMES = ("svc", ["amount", "count_1h"])


@pytest.fixture(scope="module")
def applied_repo(tmp_path_factory):
    """A small repo as `sluice init` writes it, applied: the report reads the event id field from it."""
    from features.feast_repo import load_plan, open_store
    from stream.cli.init import write_repo
    from stream.feast import repo

    path = write_repo(tmp_path_factory.mktemp("experiment") / "repo", users=20, days=1)
    repo.apply(path)
    return path, load_plan(open_store(path)).schema.event_id


def _record(id_field, event_id, *, kind="joined", label, revision=1, version, route, scores, threshold, at, previous=None):
    pred = ls.Prediction(event_ms=at, scored_ms=at + 5, threshold=threshold, names_id=b"\0" * 8,
                         vector=np.array([12.5, np.nan]), model_version=version, route=route, scores=scores)
    entry = ls.Entry(has_pred=True, has_label=label is not None, revision=revision,
                     label=np.nan if label is None else label, label_ms=at + 60_000, pred=pred)
    return labeled_record(id_field, event_id, kind, entry, NAMES, previous)


def _run(broker, repo_path, labeled_topic, deployments_topic, tmp_path) -> dict:
    env = {**os.environ, "SLUICE_LABELED_TOPIC": labeled_topic, "SLUICE_DEPLOYMENTS_TOPIC": deployments_topic}
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "experiment", "report", "--bootstrap-servers", broker.bootstrap_servers,
         "--repo", str(repo_path), "--model-dir", str(tmp_path / "no-models"), "--json", "--idle", "2"],
        capture_output=True, text=True, env=env, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _produce(broker, topic, records, id_field):
    import orjson

    producer = make_producer(broker.bootstrap_servers)
    for r in records:
        producer.produce(topic, key=str(r[id_field]).encode(), value=orjson.dumps(r))
    assert producer.flush(30) == 0


def _topics(broker, unique, *steps: tuple[str, float, datetime]) -> tuple[str, str]:
    """A labeled and a deployments topic of the test's own; v1 champion from START, then v2 as each (mode, share, at)."""
    labeled_topic, deployments_topic = unique("labeled"), unique("deployments")
    publish(broker.bootstrap_servers, deployments_topic, Deployment(seq=1, champion="v1", at=START.isoformat()))
    for seq, (mode, share, at) in enumerate(steps, start=2):
        publish(broker.bootstrap_servers, deployments_topic,
                Deployment(seq=seq, champion="v1", mode=mode, challengers=("v2",), share=share, at=at.isoformat()))
    return labeled_topic, deployments_topic


def _scores(rng, n):
    logit = rng.normal(-2.0, 1.2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    v1 = 1 / (1 + np.exp(-(logit + rng.normal(0, 1.2, n))))
    v2 = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.5, n))))
    return y, v1, v2


def test_canary_report_is_the_paired_comparison_of_the_records(broker, applied_repo, unique, tmp_path):
    repo_path, id_field = applied_repo
    labeled_topic, deployments_topic = _topics(broker, unique, ("canary", 0.3, START))
    t0 = int(START.timestamp() * 1000)
    n = 2500
    rng, (y, v1, v2) = np.random.default_rng(0), _scores(np.random.default_rng(10), n)
    canary = rng.random(n) < 0.3
    records, final = [], {}
    for i in range(n):
        version, route, threshold = ("v2", "canary", 0.4) if canary[i] else ("v1", "champion", 0.3)
        common = dict(version=version, route=route, scores={"v1": float(v1[i]), "v2": float(v2[i])}, threshold=threshold,
                      at=t0 + i * 1000)
        label = None if i % 50 == 7 else float(y[i])
        records.append(_record(id_field, f"e{i}", kind="joined" if label is not None else "unlabeled", label=label, **common))
        if i % 40 == 3:  # a later correction flips the label; the report must use it
            records.append(_record(id_field, f"e{i}", kind="correction", label=1 - y[i], revision=2,
                                   previous=(y[i], "label"), **common))
            label = 1 - y[i]
        if i % 97 == 5:
            records.append(records[-1])  # a crash sent it twice
        final[i] = label
    _produce(broker, labeled_topic, records, id_field)

    result = _run(broker, repo_path, labeled_topic, deployments_topic, tmp_path)

    assert result["deployment"]["mode"] == "canary" and len(result["experiments"]) == 1
    got = result["experiments"][0]
    rows = np.array([i for i in range(n) if final[i] is not None])
    labels = np.array([final[i] for i in rows])
    p1, p2 = v1[rows], v2[rows]
    loss = lambda p: -(labels * np.log(p) + (1 - labels) * np.log(1 - p))  # noqa: E731
    diff = loss(p1) - loss(p2)
    assert (got["kind"], got["challenger"], got["champion"]) == ("paired", "v2", "v1")
    assert got["n"] == len(rows) and got["positives"] == int(labels.sum())
    assert got["effect"] == pytest.approx(diff.mean(), rel=1e-9)
    half = ex.radius(diff.std(ddof=1), len(rows))
    assert got["interval"] == pytest.approx([diff.mean() - half, diff.mean() + half], rel=1e-9)
    brier = (p1 - labels) ** 2 - (p2 - labels) ** 2
    assert got["metrics"]["brier"]["effect"] == pytest.approx(brier.mean(), rel=1e-9)
    assert got["p_value"] < ex.ALPHA and got["decision"] == ex.PROMOTE
    agree = float(((v1 >= 0.3) == (v2 >= 0.4)).mean())  # every event, labeled or not, with each version's threshold
    assert got["agreement"]["events"] == n and got["agreement"]["rate"] == pytest.approx(agree)


def test_ab_report_compares_the_arms_since_the_split_began(broker, applied_repo, unique, tmp_path):
    repo_path, id_field = applied_repo
    began = START + timedelta(hours=1)
    labeled_topic, deployments_topic = _topics(broker, unique, ("ab", 0.2, START), ("ab", 0.5, began))
    t0 = int(START.timestamp() * 1000)
    n = 3000
    rng, (y, v1, v2) = np.random.default_rng(1), _scores(np.random.default_rng(11), n)
    on_b = rng.random(n) < 0.5
    before = np.arange(n) < 400  # scored under the earlier split (0.2 to B): not part of this run
    on_b[before] = rng.random(400) < 0.2
    fallback = np.arange(n) % 61 == 0  # answered by the other version: not the arm's own
    records = []
    for i in range(n):
        route = "ab:B" if on_b[i] else "ab:A"
        version = "v2" if (route == "ab:B") != fallback[i] else "v1"
        at = (t0 if before[i] else int(began.timestamp() * 1000) + 1000) + i
        records.append(_record(id_field, f"e{i}", label=float(y[i]), version=version, route=route,
                               scores={"v1": float(v1[i]), "v2": float(v2[i])}, threshold=0.3, at=at))
    _produce(broker, labeled_topic, records, id_field)

    got = _run(broker, repo_path, labeled_topic, deployments_topic, tmp_path)["experiments"][0]

    keep = ~before & ~fallback
    a, b = keep & ~on_b, keep & on_b
    loss = lambda p, m: -(y[m] * np.log(p[m]) + (1 - y[m]) * np.log(1 - p[m]))  # noqa: E731
    assert got["kind"] == "unpaired" and got["n"] == int(keep.sum())
    assert got["effect"] == pytest.approx(loss(v1, a).mean() - loss(v2, b).mean(), rel=1e-9)
    assert (got["sample_ratio"]["a"], got["sample_ratio"]["b"]) == (int(a.sum()), int(b.sum()))
    assert got["sample_ratio"]["mismatch"] is False


def test_the_text_report_says_the_decision_and_the_agreement():
    from stream.cli.experiment import render
    from stream.lifecycle.experiment_report import report

    y, v1, v2 = _scores(np.random.default_rng(12), 3000)
    records = [_record("id", f"e{i}", label=float(y[i]), version="v1", route="champion", threshold=0.3,
                       scores={"v1": float(v1[i]), "v2": float(v2[i])}, at=1_800_000_000_000 + i) for i in range(3000)]
    history = [Deployment(seq=1, champion="v1"), Deployment(seq=2, champion="v1", mode="shadow", challengers=("v2",))]
    text = render(report(records, history, "id", thresholds={"v2": 0.4}))
    assert "v2 against v1 (paired, 3,000 labeled events" in text and "PROMOTE" in text
    assert "decisions agree on" in text and "always-valid p" in text
    alone = render(report(records, [Deployment(seq=3, champion="v2")], "id"))
    assert "no experiment" in alone


def test_thresholds_come_from_the_registry_where_it_has_the_version(tmp_path):
    from stream.cli.experiment import _thresholds
    from stream.settings import Settings

    for version, threshold in (("v1", 0.3), ("v2", 0.45)):
        (tmp_path / version).mkdir()
        (tmp_path / version / "model.json").write_text(json.dumps({"threshold": threshold}))
    settings = Settings.from_env(model_dir=str(tmp_path))
    assert _thresholds(settings, ["v1", "v2", "v3"]) == {"v1": 0.3, "v2": 0.45}
