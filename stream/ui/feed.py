"""The status page's one Kafka consumer: every topic it shows, in a background thread.

Partitions are assigned, not subscribed (no consumer group: the page never
moves the workers' partitions, and two pages do not share the work), and
topics that appear later (`monitoring` before the first alert, a new events
topic's `.dlq`) are picked up at the next refresh. `monitoring` and
`deployments` are read from their beginning (an alert opened long ago is
still open; the deployment state is the latest record), and so is `labeled`
for the experiments (`sluice experiment report` reads all of it; the
online metrics still count only its records from `lookback_s` on); the others from
`lookback_s` before the page started, and older records are skipped where a
broker does not look offsets up by time.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

from features.errors import SluiceError
from stream.kafka.clients import make_consumer
from stream.kafka.topics import outcome_role
from stream.lifecycle.experiment_live import LiveExperiments
from stream.pipeline.outcomes import HEADER_KIND, HEADER_REASON, HEADER_SOURCE
from stream.pipeline.records import read_log
from stream.serving.deployment import Deployment
from stream.ui.board import Board
from stream.ui.monitoring import MonitorBoard


#: Roles whose topics are read from their beginning.
WHOLE = ("monitoring", "deployments", "labeled")


@dataclass(frozen=True)
class Topics:
    prediction_log: str = "prediction_log"
    monitoring: str = "monitoring"
    deployments: str = "deployments"
    labeled: str = "labeled"
    #: Events topics whose `.dlq` and `.late` are read; empty: every topic named `*.dlq` or `*.late`.
    events: tuple[str, ...] = ()

    def role(self, topic: str) -> str | None:
        named = {
            self.prediction_log: "log", self.monitoring: "monitoring", self.deployments: "deployments", self.labeled: "labeled",
        }
        if topic in named:
            return named[topic]
        return outcome_role(topic, self.events)


def _header(msg, name: str) -> str:
    for key, value in msg.headers() or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace")
    return ""


class TopicFeed(threading.Thread):
    """Reads the topics into `board` and `monitor` until `stop()`."""

    def __init__(
        self, bootstrap: str, board: Board, monitor: MonitorBoard, topics: Topics, *, lookback_s: float,
        refresh_s: float = 5.0, experiments: LiveExperiments | None = None,
    ):
        super().__init__(name="sluice-ui-feed", daemon=True)
        self.board, self.monitor, self.topics, self.refresh_s = board, monitor, topics, refresh_s
        self.experiments = experiments or LiveExperiments()
        self.since_ms = int((time.time() - lookback_s) * 1000)
        self.consumer = make_consumer(
            bootstrap, **{"group.id": f"sluice-ui-{uuid.uuid4().hex}", "enable.auto.commit": False, "fetch.wait.max.ms": 100}
        )
        self.read: Counter = Counter()
        self.error: str | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._roles: dict[str, str] = {}
        self._halt = threading.Event()

    def refresh(self) -> None:
        """Assign every partition of every shown topic not assigned yet."""
        try:
            metadata = self.consumer.list_topics(timeout=3)
        except KafkaException as exc:
            self.error = f"cannot list topics: {exc.args[0].str()}; check --bootstrap-servers"
            return
        self.error = None
        new = []
        for name, topic in metadata.topics.items():
            role = self.topics.role(name)
            if role is None or topic.error is not None:
                continue
            self._roles[name] = role
            new += [TopicPartition(name, p) for p in topic.partitions if (name, p) not in self._assigned]
        if not new:
            return
        whole = [self._roles[tp.topic] in WHOLE for tp in new]
        starts = [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp, w in zip(new, whole) if w]
        by_time = [TopicPartition(tp.topic, tp.partition, self.since_ms) for tp, w in zip(new, whole) if not w]
        if by_time:
            try:
                found = self.consumer.offsets_for_times(by_time, timeout=10)
            except KafkaException:
                found = [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in by_time]
            # -1: nothing at or after that time yet; read what comes.
            starts += [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END) for tp in found]
        self.consumer.incremental_assign(starts)
        self._assigned.update((tp.topic, tp.partition) for tp in starts)

    def handle(self, msg) -> None:
        topic = msg.topic()
        role = self._roles.get(topic)
        t_ms = msg.timestamp()[1]
        if role is None or (role not in WHOLE and t_ms < self.since_ms):
            return
        recent = t_ms >= self.since_ms
        self.read[topic] += 1
        value = msg.value()
        try:
            if role == "log":
                self.board.add_log(read_log(value), t_ms)
            elif role == "dlq":
                self.board.add_dead_letter(_header(msg, HEADER_REASON), _header(msg, HEADER_KIND) or None)
            elif role == "late":
                self.board.add_late(_header(msg, HEADER_SOURCE))
            elif role == "monitoring":
                self.monitor.add(orjson.loads(value))
            elif role == "deployments":
                self.monitor.add_deployment(orjson.loads(value) if value is not None else None)
                self._deployed(value)
            elif role == "labeled":
                record = orjson.loads(value)
                if recent:
                    self.board.add_labeled(record, msg.key())
                self.experiments.add([(msg.key(), record)])
        except (orjson.JSONDecodeError, TypeError, AttributeError, KeyError, ValueError):
            # Not what the page expects (a tombstone, another writer's format): counted, not fatal.
            self.board.unreadable_record(topic)

    def _deployed(self, value: bytes | None) -> None:
        """A record the deployment table shows but no Deployment reads (another writer's shape) runs no experiment."""
        if value is None:
            return
        try:
            self.experiments.deployed(Deployment.from_json(value))
        except SluiceError:
            return

    def run(self) -> None:
        next_refresh = 0.0
        try:
            while not self._halt.is_set():
                if time.monotonic() >= next_refresh:
                    self.refresh()
                    next_refresh = time.monotonic() + self.refresh_s
                for msg in self.consumer.consume(5000, timeout=0.2):
                    if not msg.error():
                        self.handle(msg)
        finally:
            self.consumer.close()

    def status(self) -> dict:
        return {"error": self.error, "read": dict(self.read), "since_ms": self.since_ms}

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)
