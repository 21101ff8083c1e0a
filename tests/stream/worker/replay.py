"""Six hours of card transactions replayed through real workers in parts, and checked against the offline path."""

from __future__ import annotations

from datetime import timedelta

import orjson

from features.feast_repo import load_plan, open_store
from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.kafka.topics import AppTopics
from stream.settings import Settings
from stream.tools.parity import arrival_columns, compare
from tests.conftest import NOW


class Replay:
    """The repo's card transactions of six hours (a frame, and payloads in a disordered arrival order), its topic made."""

    def __init__(self, repo: dict, bootstrap: str, predictions_topic: str):
        self.repo, self.bootstrap, self.predictions_topic = repo, bootstrap, predictions_topic
        ensure_topics(bootstrap, [repo["topic"]], 4)
        start = NOW + timedelta(days=3)
        self.live, _ = generate_transactions(repo["world"], repo["cfg"], start, start + timedelta(hours=6), id_prefix="S")
        self.payloads = list(event_stream(self.live, disorder_ms=10_000, seed=7))
        self.producer = make_producer(bootstrap)

    def produce(self, items) -> None:
        for payload in items:
            self.producer.produce(self.repo["topic"], payload, orjson.loads(payload)["card_id"].encode())
        assert self.producer.flush(30) == 0

    def predicted(self, expect: int) -> int:
        """Events with a prediction, once `expect` have one or the topic is quiet."""
        got = read_topic(self.bootstrap, self.predictions_topic, expect=expect, timeout_s=180, idle_s=30)
        return len({m.key() for m in got})

    def assert_exact(self, app_id: str, log_topic: str) -> None:
        """Every event has a prediction log record, and every logged feature equals the offline value."""
        log = [
            orjson.loads(m.value())
            for m in read_topic(self.bootstrap, log_topic, expect=len(self.payloads), timeout_s=240, idle_s=60)
        ]
        assert len({r["transaction_id"] for r in log}) == len(self.payloads)
        plan = load_plan(open_store(self.repo["path"]))
        repartitions = AppTopics.for_plan(Settings(app_id=app_id), plan).repartitions
        where = arrival_columns(self.bootstrap, plan, plan.schema.event_id, repartitions)
        report = compare(plan, self.live, log, where, set())
        assert report.compared >= len(self.payloads)
        assert report.mismatches == 0, report.examples
