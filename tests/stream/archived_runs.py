"""A served and archived run: disordered demo events through a real worker, its prediction log, the events archive.

Session fixtures (registered in tests/stream/conftest.py), one per events
partition count, shared by the archive-reader and `sluice skew` tests:
building one costs a worker start and a few thousand events.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import orjson
import pandas as pd
import pytest

from features.feast_repo import load_plan, open_store
from features.spec import FeaturePlan
from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.lifecycle.archive_history import validator_for
from stream.pipeline.records import read_log
from stream.services.archiver import archive_topic
from stream.tools.process import worker_process
from tests.conftest import NOW

#: Arrival differs from event time by up to this: within the demo's allowed lateness (5 min), so no event is late.
DISORDER_MS = 120_000


@dataclass
class ArchivedRun:
    repo: dict  # the trained repo reading this run's events topic
    plan: FeaturePlan
    archive: Path
    log: list[dict]  # prediction-log records
    log_topic: str
    partitions: int
    events: int  # valid events produced
    messages: int  # messages produced, dead letters included


def _dense_stream(repo: dict, seed: int) -> list[bytes]:
    """Two days of demo traffic squeezed into one hour (so that cards and merchants have events minutes apart), disordered, 1% malformed."""
    cfg, world = repo["cfg"], repo["world"]
    start = NOW + timedelta(days=3)
    live, _ = generate_transactions(world, cfg, start, start + timedelta(days=2), id_prefix=f"A{seed}-")
    live["event_time"] = start + (live["event_time"] - start) / 48
    live["event_time"] = live["event_time"].dt.floor("ms")
    return list(event_stream(live, disorder_ms=DISORDER_MS, bad_fraction=0.01, seed=seed))


def _key(payload: bytes) -> bytes | None:
    """The Kafka key a producer gives: str(card_id); none for what is not an event."""
    try:
        card = orjson.loads(payload).get("card_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return None if card is None else str(card).encode()


def serve_and_archive(bootstrap: str, trained_repo: dict, work: Path, partitions: int, seed: int) -> ArchivedRun:
    from stream.feast import repo as feast_repo

    topic = f"archived-{partitions}p-{seed}-{work.name[-8:]}"
    path = work / "repo"
    shutil.copytree(trained_repo["path"], path, ignore=shutil.ignore_patterns("registry.db"))
    definitions = next(p for p in path.glob("*.py") if trained_repo["topic"] in p.read_text())
    definitions.write_text(definitions.read_text().replace(f'topic="{trained_repo["topic"]}"', f'topic="{topic}"'))
    feast_repo.apply(path)
    repo = {**trained_repo, "path": path, "topic": topic}
    plan = load_plan(open_store(path))
    ensure_topics(bootstrap, [topic], partitions)
    log_topic = f"{topic}.log"
    env = {"SLUICE_PREDICTIONS_TOPIC": f"{topic}.predictions", "SLUICE_PREDICTION_LOG_TOPIC": log_topic}
    payloads = _dense_stream(repo, seed)
    keys = [_key(p) for p in payloads]
    valid = len(validator_for(plan).parse(payloads, list(range(len(payloads))), keys).index)
    assert 0 < valid < len(payloads)
    worker = worker_process(bootstrap, path, repo["model_dir"], work, "worker", app_id=f"{topic}-app",
                            partitions=partitions, env=env)
    worker.start()
    try:
        worker.wait_ready()
        producer = make_producer(bootstrap)
        for payload, key in zip(payloads, keys):
            producer.produce(topic, payload, key)
        assert producer.flush(30) == 0
        log = [read_log(m.value()) for m in read_topic(bootstrap, log_topic, expect=valid, timeout_s=180, idle_s=20)]
    finally:
        worker.stop()
    archive = work / "archive"
    assert archive_topic(bootstrap, topic, archive, idle_s=2.0, flush_s=0.05) >= len(payloads)  # ticks besides
    return ArchivedRun(repo, plan, archive, log, log_topic, partitions, valid, len(payloads))


def offline_by_arrival(run: ArchivedRun, frame: pd.DataFrame, values: pd.DataFrame) -> dict[tuple[int, int], dict]:
    """Offline values by the (events partition, offset) of each row."""
    places = zip(frame["partition"].tolist(), frame["offset"].tolist())
    return dict(zip(places, values.to_dict("records")))


@pytest.fixture(scope="session")
def archived_run_4(broker, trained_repo, tmp_path_factory) -> ArchivedRun:
    """Four events partitions: stage-0 features are exact today; after the merchant hop, only with the arrival clock."""
    return serve_and_archive(broker.bootstrap_servers, trained_repo, tmp_path_factory.mktemp("archived4"), 4, seed=41)


@pytest.fixture(scope="session")
def archived_run_1(broker, trained_repo, tmp_path_factory) -> ArchivedRun:
    """One events partition: the arrival order is offset order, so every stage follows it already."""
    return serve_and_archive(broker.bootstrap_servers, trained_repo, tmp_path_factory.mktemp("archived1"), 1, seed=42)
