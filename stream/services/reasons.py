"""`sluice reasons`: reason codes off the scoring path, from the prediction log to the `reasons` topic.

The worker scores and publishes without explaining (SLUICE_REASONS=service,
the default), so no prediction waits for attribution. This service reads
`prediction_log` in its own consumer group (`<app id>-reasons`), explains
each micro-batch's positive decisions and stable sample with the pure step
stream.serving.explain.explain_log (TreeSHAP on the exact logged vector, one
call per version; path attribution with SLUICE_REASON_METHOD=path), writes
one record per explained event to the `reasons` topic keyed by event id, and
commits its offsets only once the broker has every record of the batch: a
crash replays the batch, writing at worst identical records again. A wanted
explanation it cannot compute (its version cannot be loaded) is logged and
counted, never invented.

Models come from where the worker fetches them (SLUICE_REGISTRY, else the
model directory), verified and loaded once per version. Of the prediction
log it explains only its own app id's records (several groups may share
the topic). Replicas in one group split the log's partitions.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import orjson
from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry, Counter, Histogram

from features.errors import SluiceError
from stream.health_http import ServiceHealth
from stream.kafka.clients import configure, ensure_topics, make_admin, make_consumer, make_producer
from stream.kafka.reach import check_reachable
from stream.kafka.topics import AppTopics
from stream.registry import CHAMPION, ModelStore, open_registry
from stream.serving.explain import Explainer, explain_log
from stream.services.monitor_models import ModelShelf
from stream.settings import Settings

log = logging.getLogger("sluice.reasons")

#: The service's own metrics (it is not a worker: none of the worker's series).
REGISTRY = CollectorRegistry()
RECORDS = Counter("sluice_reason_records_total", "Reason records written to the reasons topic", registry=REGISTRY)
UNEXPLAINED = Counter(
    "sluice_reasons_unexplained_total", "Predictions that wanted reason codes and got none (model not loadable, vector incomplete)",
    registry=REGISTRY,
)
SKIPPED = Counter("sluice_reasons_skipped_total", "Prediction-log records not explained, by why", ["why"], registry=REGISTRY)
DELAY = Histogram(
    "sluice_reasons_delay_seconds", "From a prediction-log record's broker timestamp to its reason record's delivery",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "sluice_reasons_step_seconds", "Seconds per micro-batch in each step: read, explain (parse and attribute), deliver, commit",
    ["step"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=REGISTRY,
)
#: How long the broker may take to acknowledge one batch's records before the service gives up (and exits).
DELIVERY_TIMEOUT_S = 30.0


class ReasonsLoop:
    def __init__(self, settings: Settings, id_field: str, *, registry: ModelStore | None = None):
        self.settings = settings
        self.group = settings.app_id
        self.id_field = id_field
        self.topics = AppTopics.named(settings)
        self.shelf = ModelShelf(registry or open_registry(settings))
        self.explainer = Explainer(settings.reason_k, settings.reason_method)
        self.stop = threading.Event()
        self._refused: dict[str, str] = {}  # version -> why it could not be loaded (said once)
        self._warm()
        bootstrap = settings.bootstrap_servers
        ensure_topics(bootstrap, [self.topics.prediction_log, self.topics.reasons], settings.partitions)
        self.consumer = make_consumer(bootstrap, **{
            "group.id": f"{self.group}-reasons", "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "fetch.wait.max.ms": 50, "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": 1000,
        })
        self.consumer.subscribe([self.topics.prediction_log])
        self.producer = make_producer(bootstrap)
        self._admin = make_admin(bootstrap)

    def _warm(self) -> None:
        """Load the registry's champion before reading: else the first positives wait for its verification (seconds)."""
        try:
            champion = self.shelf.store.resolve(CHAMPION)
        except (OSError, SluiceError):  # no champion yet: versions are loaded as their records arrive
            return
        self._models({champion})

    def run(self, ready_file: str | None = None, beat=lambda: None) -> None:
        try:
            while not self.stop.is_set():
                beat()
                self.step()
                if ready_file and self.consumer.assignment() and not Path(ready_file).exists():
                    Path(ready_file).write_text("ready\n")
        finally:
            self.close()

    def step(self, timeout_s: float = 0.1) -> int:
        """Read one micro-batch, explain it, write the records, commit once they are delivered; returns the messages read.

        `consume` waits for its whole timeout unless 5,000 records come
        first, so the timeout bounds what a quiet log adds to the delay.
        """
        started = time.perf_counter()
        messages = [m for m in self.consumer.consume(5000, timeout=timeout_s) if not m.error()]
        if not messages:
            return 0
        read = time.perf_counter()
        logs, times = self._mine(messages)
        versions = {r.get("model_version") for r in logs} - {None}
        explained = explain_log(logs, self.id_field, self._models(versions), self.explainer, self.settings.reason_share)
        if explained.unexplained:
            UNEXPLAINED.inc(len(explained.unexplained))
            log.warning("reasons: %d predictions not explained, e.g. %s: %s", len(explained.unexplained), *explained.unexplained[0])
        explained_at = time.perf_counter()
        self._send(explained.records, times)
        delivered_at = time.perf_counter()
        try:
            # Asynchronous: the next batch is read meanwhile; a commit lost to a crash replays this batch.
            self.consumer.commit(asynchronous=True)
        except KafkaException as exc:  # a rebalance took the partitions: their next owner explains the batch again
            log.warning("reasons: offsets not committed (%s); the batch will be explained again", exc)
        for name, seconds in (("read", read - started), ("explain", explained_at - read),
                              ("deliver", delivered_at - explained_at), ("commit", time.perf_counter() - delivered_at)):
            STEP_SECONDS.labels(name).observe(seconds)
        return len(messages)

    def _mine(self, messages) -> tuple[list[dict], dict[str, float]]:
        """This group's readable records, and each event's prediction-log broker time (seconds)."""
        logs, times = [], {}
        for msg in messages:
            try:
                record = orjson.loads(msg.value())
                mine = record.get("app_id") == self.group
            except (orjson.JSONDecodeError, TypeError, AttributeError):
                SKIPPED.labels("unreadable").inc()
                continue
            if not mine:
                SKIPPED.labels("other_group").inc()
                continue
            logs.append(record)
            times[str(record.get(self.id_field))] = msg.timestamp()[1] / 1000
        return logs, times

    def _models(self, versions: set[str]) -> dict:
        """Version -> loaded model, for those the registry provides (a refusal is logged once per version)."""
        models = {}
        for version in versions:
            try:
                models[version] = self.shelf.model(version)
            except (OSError, SluiceError) as exc:
                if version not in self._refused:
                    log.error("reasons: model version %s cannot be loaded from %s: %s", version, self.shelf.where, exc)
                self._refused[version] = str(exc)
        return models

    def _send(self, records: list[dict], times: dict[str, float]) -> None:
        failed: list[str] = []

        def delivered(err, msg) -> None:
            if err is not None:
                failed.append(str(err))
                return
            DELAY.observe(max(time.time() - times.get(msg.key().decode(), time.time()), 0.0))

        for record in records:
            key = record[self.id_field].encode()
            self.producer.produce(self.topics.reasons, orjson.dumps(record), key, on_delivery=delivered)
        left = self.producer.flush(DELIVERY_TIMEOUT_S)
        if left or failed:
            # Crash-only: the batch is not committed, and the next start explains it again.
            why = failed[0] if failed else f"{left} records unacknowledged after {DELIVERY_TIMEOUT_S:g} s"
            msg = f"reason records not delivered to {self.topics.reasons} ({why}); exiting without committing the batch"
            raise SluiceError(msg)
        RECORDS.inc(len(records))

    def working(self) -> str | None:
        try:
            return None if self.consumer.assignment() else "no partition of the prediction log assigned yet"
        except RuntimeError:  # the consumer is closed: the service is stopping
            return "stopping"

    def close(self) -> None:
        self.stop.set()
        try:
            self.consumer.close()
        finally:
            self.producer.flush(10)


def run_reasons(settings: Settings, id_field: str) -> None:
    """Run until SIGINT/SIGTERM (blocking)."""
    configure(settings)  # every client of this process: the security settings of `settings`
    check_reachable(settings)
    loop = ReasonsLoop(settings, id_field)
    health = ServiceHealth("reasons", loop._admin.list_topics, working=loop.working)
    health.serve(settings.metrics_port, settings.metrics_host, REGISTRY)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: loop.stop.set())
    log.warning(
        "reasons of group %s: %s -> %s (%s, top %d), metrics on port %s", loop.group, loop.topics.prediction_log,
        loop.topics.reasons, settings.reason_method, settings.reason_k, settings.metrics_port or "off",
    )
    try:
        loop.run(settings.ready_file, beat=health.beat)
    finally:
        health.close()
