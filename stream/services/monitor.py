"""`sluice monitor`: drift, data quality and outcome rates of a consumer group, as alerts and gauges.

One process per consumer group of workers. It reads `prediction_log` and
the events topic's `.dlq` and `.late` copies with a confluent consumer in
its own group (`<app id>-monitor`), feeds each micro-batch to the pure
monitor (stream.monitor.monitor.Monitor), writes every alert and recovery
record to the `monitoring` topic (one partition: read back in order) and a
log line, and serves its own gauges (stream.monitor.gauges.REGISTRY, no
worker series) on its own metrics port. It follows `labeled` too: the
experiment gauges are `sluice experiment report` kept current.

Every name it uses comes from the one Settings object the worker reads
too: the topics (prediction log, predictions, monitoring, deployments), the
app id, the model registry and the Kafka security settings. Of the
prediction log it judges only the records of its own app id (several groups
may share the topic), and of the model versions only those the current
deployment serves (the deployments topic), each retired one up to its last
complete window. Contributions for
attribution drift are computed here, on a sample sized to a share of one
core, never on the scoring path.

Windows live in memory: a restarted monitor starts them empty (they fill
within one window span), but reads the `monitoring` topic first, so alerts
it had already opened are not sent again.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import TopicPartition

from stream.health_http import ServiceHealth
from stream.kafka.clients import configure, ensure_topics, make_admin, make_consumer, make_producer
from stream.kafka.control import Follower
from stream.kafka.reach import check_reachable
from stream.kafka.reader import read_topic
from stream.kafka.topics import AppTopics
from stream.lifecycle.experiment_live import LiveExperiments
from stream.monitor import gauges
from stream.monitor.alerts import ALERT
from stream.monitor.monitor import Monitor
from stream.monitor.thresholds import Thresholds
from stream.pipeline.outcomes import HEADER_APP, HEADER_KIND
from stream.serving.deployment import Deployment
from stream.registry import ModelStore, open_registry
from stream.settings import Settings
from stream.services.monitor_models import AttributionBudget, ModelShelf

log = logging.getLogger("sluice.monitor")

#: Seconds between consumer-lag readings, and between attribution runs and experiment reports at most.
LAG_EVERY_S, ATTRIBUTE_EVERY_S, REPORT_EVERY_S = 5.0, 1.0, 1.0
_ROLES = ("prediction_log", "dlq", "late")
_DRIFT = {"psi", "js", "linf"}
_QUALITY = {"missing_share", "defaulted_share", "out_of_range_share", "unseen_entity_share"}


class MonitorLoop:
    def __init__(
        self, settings: Settings, *, thresholds: Thresholds | None = None, events_topic: str | None = None,
        core_share: float = 0.05, registry: ModelStore | None = None,
    ):
        self.settings = settings
        self.group = settings.app_id
        self.shelf = ModelShelf(registry or open_registry(settings), settings.repo_path, settings.feature_service)
        events_topic = events_topic or self.shelf.events_topic() or "transactions"
        self.topics = topics = AppTopics.of(settings, events_topic)
        self.roles = {topics.prediction_log: "prediction_log", topics.dlq: "dlq", topics.late: "late"}
        self.events_topic, self.monitoring_topic, self.deployments_topic = topics.events, topics.monitoring, topics.deployments
        self.thresholds = thresholds or Thresholds()
        self.monitor = Monitor(
            self.thresholds, self.shelf.describe, batch_views=self.shelf.batch_views(), entities=self.shelf.entities,
        )
        self.budget = AttributionBudget(core_share)
        self.sent: list[dict] = []  # every record this loop wrote (tests and the demo read them too)
        self.stop = threading.Event()
        bootstrap = settings.bootstrap_servers
        ensure_topics(bootstrap, [self.monitoring_topic], 1)
        ensure_topics(bootstrap, list(self.roles), settings.partitions)
        self._restore(bootstrap)
        # The experiments' gauges are `sluice experiment report` over the whole labeled topic: read it once
        # here (a restarted monitor's group has committed past it), then follow it with the other topics.
        self.labeled_topic = topics.labeled
        self.experiments = LiveExperiments()
        self.experiments.add([(m.key(), orjson.loads(m.value())) for m in read_topic(
            bootstrap, self.labeled_topic, idle_s=1.0, timeout_s=600.0)])
        self._reported_at = 0.0
        self.consumer = make_consumer(bootstrap, **{
            "group.id": f"{self.group}-monitor", "auto.offset.reset": "earliest", "enable.auto.commit": True,
            "fetch.wait.max.ms": 100, "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": 1000,
        })
        self.consumer.subscribe([*self.roles, self.labeled_topic])
        self.producer = make_producer(bootstrap)
        self.lag_probe = make_consumer(bootstrap, **{"group.id": self.group, "enable.auto.commit": False})
        self._admin = make_admin(bootstrap)
        # Which versions each deployment serves: read in a thread, handed to the monitor between steps.
        self._deployments: queue.SimpleQueue = queue.SimpleQueue()
        self._follower = Follower(bootstrap, self.deployments_topic, Deployment.from_json)
        self._follower.read(self._deployments.put, idle_s=1.0, timeout_s=30.0)
        self._following = self._follower.follow(self._deployments.put, self.stop)
        self.foreign = 0  # prediction_log records of other app ids (or of none), not judged
        gauges.INFO.clear()  # one monitor a process: its group is the only one it names
        gauges.INFO.labels(self.group).set(1)
        self._rate_events, self._rate_since = 0, time.monotonic()
        self._attributed_at = self._lag_at = 0.0
        self._checks: list = []  # judged while ingesting, sent after
        self._paused: set[int] = set()

    def _restore(self, bootstrap: str) -> None:
        """Open alerts of this group, from what the monitoring topic already holds."""
        mine = []
        for msg in read_topic(bootstrap, self.monitoring_topic, idle_s=1.0, timeout_s=30.0):
            record = orjson.loads(msg.value())
            if record.get("group") == self.group:
                mine.append(record)
        self.monitor.book.restore(mine)
        if self.monitor.book.open:
            log.warning("monitor: %d alerts still open from before (not sent again)", len(self.monitor.book.open))

    # -- the loop ------------------------------------------------------------

    def run(self, ready_file: str | None = None, beat=lambda: None) -> None:
        try:
            while not self.stop.is_set():
                beat()
                self.step(timeout_s=0.5)
                if ready_file and self.consumer.assignment() and not Path(ready_file).exists():
                    Path(ready_file).write_text("ready\n")
        finally:
            self.close()

    def step(self, timeout_s: float = 0.5) -> int:
        """Read one micro-batch, update, judge, send; returns the messages read."""
        started = time.perf_counter()
        while not self._deployments.empty():
            deployment = self._deployments.get()
            self.monitor.deployed(deployment.seq, deployment.versions)
            self.experiments.deployed(deployment)
        messages = [m for m in self.consumer.consume(5000, timeout=timeout_s) if not m.error()]
        self._ingest(messages)
        self._report()
        self._pace()
        t_eval = time.perf_counter()
        now = time.time()
        checks = self._checks + self.monitor.evaluate(time.monotonic(), int(now * 1000))
        self._checks = []
        records = self.monitor.judge(checks, _iso_now(now))
        self._gauges(checks)
        self._send(records)
        gauges.STEP_SECONDS.labels("evaluate").observe(time.perf_counter() - t_eval)
        self._attribute()
        if time.monotonic() - self._lag_at > LAG_EVERY_S:
            self._lag_at = time.monotonic()
            self._lags()
        gauges.STATE_BYTES.set(self.monitor.nbytes)
        while self.monitor.evicted:
            gauges.forget(self.monitor.evicted.pop())
        gauges.STEP_SECONDS.labels("batch").observe(time.perf_counter() - started)
        return len(messages)

    def _ingest(self, messages) -> None:
        t0 = time.perf_counter()
        logs: list[dict] = []
        partitions: list[int] = []
        outcomes: dict[str, tuple[list, list]] = {"prediction": ([], []), "dlq": ([], []), "late": ([], [])}
        labeled = []
        for msg in messages:
            if msg.topic() == self.labeled_topic:
                labeled.append(msg)
                continue
            role = self.roles.get(msg.topic())
            gauges.MESSAGES.labels(role or "other").inc()
            if role == "prediction_log":
                try:
                    record = orjson.loads(msg.value())
                    mine = record.get("app_id") == self.group
                except (orjson.JSONDecodeError, TypeError, AttributeError):
                    gauges.ERRORS.labels("monitor_unreadable_record").inc()
                    continue
                if not mine:
                    self._foreign(record)
                    continue
                logs.append(record)
                partitions.append(msg.partition())
                outcomes["prediction"][1].append(msg.timestamp()[1])
            elif role in ("dlq", "late"):
                headers = dict(msg.headers() or ())
                writer = headers.get(HEADER_APP)
                if writer is not None and writer.decode(errors="replace") != self.group:
                    # Another consumer group's copy of an event both groups read (a copy without the
                    # header comes from a worker that predates it, and is counted).
                    gauges.MESSAGES.labels("other_group").inc()
                    continue
                outcomes[role][0].append((headers.get(HEADER_KIND) or b"unknown").decode(errors="replace"))
                outcomes[role][1].append(msg.timestamp()[1])
        self._labeled(labeled)
        gauges.STEP_SECONDS.labels("parse").observe(time.perf_counter() - t0)
        t1 = time.perf_counter()
        for outcome, (reasons, times) in outcomes.items():
            if times:
                self.monitor.add_outcomes(outcome, None if outcome == "prediction" else reasons, times)
        try:
            # Drift windows are judged as the records pass them; the rates after this step.
            self._checks = self.monitor.process(logs, partitions, time.monotonic())
        except (KeyError, TypeError, ValueError) as exc:
            gauges.ERRORS.labels("monitor_unreadable_record").inc()
            log.warning("monitor: a batch of %d prediction_log records was skipped: %r", len(logs), exc)
        n_events = len(logs)
        self._rate_events += n_events
        elapsed = time.monotonic() - self._rate_since
        if elapsed >= 1.0:
            self.budget.saw(self._rate_events, elapsed)
            self._rate_events, self._rate_since = 0, time.monotonic()
        self.monitor.sample_rate = self.budget.share
        gauges.SAMPLE_RATIO.set(self.budget.share)
        gauges.STEP_SECONDS.labels("update").observe(time.perf_counter() - t1)

    def _labeled(self, messages) -> None:
        gauges.MESSAGES.labels("labeled").inc(len(messages))
        try:
            self.experiments.add([(m.key(), orjson.loads(m.value())) for m in messages])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            gauges.ERRORS.labels("monitor_unreadable_record").inc()
            log.warning("monitor: a batch of %d labeled records was skipped: %r", len(messages), exc)

    def _report(self) -> None:
        """The experiment gauges, at most every REPORT_EVERY_S and only when labels or deployments arrived."""
        if not self.experiments.changed or time.monotonic() - self._reported_at < REPORT_EVERY_S:
            return
        self._reported_at = time.monotonic()
        started = time.perf_counter()
        gauges.set_experiments(self.experiments.report())
        gauges.STEP_SECONDS.labels("experiments").observe(time.perf_counter() - started)

    def _foreign(self, record: dict) -> None:
        """A record of another consumer group sharing the prediction log (or of a worker that writes no app id)."""
        self.foreign += 1
        gauges.MESSAGES.labels("other_group").inc()
        if self.foreign == 1:
            log.warning(
                "monitor of group %s: prediction_log records of app id %r are not judged (only %r's are); a record "
                "without an app id comes from a worker older than this monitor", self.group, record.get("app_id"), self.group,
            )

    def _pace(self) -> None:
        """Pause prediction_log partitions that run ahead of the slowest one by half a window, resume the rest.

        The windows are judged at the slowest partition's event time; a
        partition far ahead would push the rings past sub-windows the slow
        one still has to fill.
        """
        now_s = time.monotonic()
        mine = [tp for tp in self.consumer.assignment() if self.roles.get(tp.topic) == "prediction_log"]
        self.monitor.expect([tp.partition for tp in mine], now_s)
        w = self.thresholds.windows
        ahead = self.monitor.ahead(now_s, w.sub_window_ms * max(w.sub_windows // 2, 1))
        pause = [tp for tp in mine if tp.partition in ahead and tp.partition not in self._paused]
        resume = [tp for tp in mine if tp.partition not in ahead and tp.partition in self._paused]
        if pause:
            self.consumer.pause(pause)
        if resume:
            self.consumer.resume(resume)
        self._paused = (self._paused | {tp.partition for tp in pause}) - {tp.partition for tp in resume}
        gauges.DROPPED.set(self.monitor.dropped)

    def _attribute(self) -> None:
        if time.monotonic() - self._attributed_at < ATTRIBUTE_EVERY_S:
            return
        self._attributed_at = time.monotonic()
        for version, buckets, rows in self.monitor.take_samples():
            started = time.perf_counter()
            try:
                model = self.shelf.model(version)
                contributions = model.booster.predict(rows, pred_contrib=True, num_threads=1)[:, :-1]
            except Exception as exc:  # noqa: BLE001 - attribution is best effort; drift and quality go on
                gauges.ERRORS.labels("monitor_attribution").inc()
                log.warning("monitor: no contributions for model %s: %s", version, exc)
                continue
            seconds = time.perf_counter() - started
            self.budget.spent(len(rows), seconds)
            gauges.ATTRIBUTION_SECONDS.inc(seconds)
            gauges.STEP_SECONDS.labels("attribution").observe(seconds)
            self.monitor.add_contributions(version, buckets, contributions)

    def _send(self, records: list[dict]) -> None:
        for record in records:
            record["group"] = self.group
            key = f"{record['model_version']}|{record['feature']}|{record['statistic']}".encode()
            self.producer.produce(self.monitoring_topic, orjson.dumps(record), key)
            gauges.ALERTS.labels(record["kind"], record["statistic"]).inc()
            _log_record(record)
            self.sent.append(record)
        if records:
            self.producer.flush(10)
        open_now: dict[tuple, int] = {}
        for held in self.monitor.book.open.values():
            k = (held.opened["statistic"], held.opened["severity"] or "none")
            open_now[k] = open_now.get(k, 0) + 1
        gauges.ALERTS_OPEN.clear()
        for (statistic, severity), n in open_now.items():
            gauges.ALERTS_OPEN.labels(statistic, severity).set(n)

    def _gauges(self, checks) -> None:
        for c in checks:
            version = c.model_version or ""
            if c.statistic in _DRIFT:
                gauges.DRIFT.labels(version, c.feature, c.statistic).set(c.value)
            elif c.statistic in _QUALITY:
                gauges.QUALITY.labels(version, c.feature, c.statistic).set(c.value)
            elif c.statistic == "ndcg":
                gauges.ATTRIBUTION_NDCG.labels(version).set(c.value)
            elif c.statistic == "attributed_rows":
                gauges.ATTRIBUTED_ROWS.labels(version).set(c.value)
            elif c.statistic == "mean_abs_contribution":
                gauges.ATTRIBUTION.labels(version, c.feature).set(c.value)
            elif c.statistic in ("dlq_rate", "late_rate"):
                gauges.OUTCOME_RATIO.labels(c.statistic.removesuffix("_rate"), c.feature).set(c.value)
            if c.window.get("time") == "event" and c.model_version:
                gauges.set_window(version, c.window)

    def _lags(self) -> None:
        """Committed vs end offsets per partition: the workers' group on its input topics, and this monitor's."""
        try:
            names = self._admin.list_topics(timeout=5).topics
            inputs = [self.events_topic, *(t for t in names if t.startswith(self.topics.repartition_prefix))]
            self._lag(self.lag_probe, self.group, [t for t in inputs if t in names], names)
            self._lag(self.consumer, f"{self.group}-monitor", [t for t in self.roles if t in names], names)
        except Exception as exc:  # noqa: BLE001 - a missed lag reading is retried in LAG_EVERY_S
            gauges.ERRORS.labels("monitor_lag").inc()
            log.debug("consumer lag not read: %r", exc)

    @staticmethod
    def _lag(consumer, group: str, topics: list[str], names) -> None:
        wanted = [TopicPartition(t, p) for t in topics for p in names[t].partitions]
        for tp in consumer.committed(wanted, timeout=5):
            low, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            done = tp.offset if tp.offset >= 0 else low
            gauges.CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(max(high - done, 0))

    def close(self) -> None:
        self.stop.set()  # ends the deployments thread too
        try:
            self.consumer.close()
            self._following.join(timeout=5)
            self._follower.close()
        finally:
            self.producer.flush(10)
            self.producer.close()
            self.lag_probe.close()


def _log_record(record: dict) -> None:
    what = f"{record['statistic']} of {record['feature']}" + (f" (model {record['model_version']})" if record["model_version"] else "")
    window = record["window"]
    if record["kind"] == ALERT:
        log.warning(
            "ALERT %s: %s = %.4g, threshold %.4g, window %s..%s (%d events)", record["severity"], what,
            record["value"], record["threshold"], window["start"], window["end"], window["events"],
        )
    else:
        log.warning("RECOVERED: %s = %.4g, window %s..%s", what, record["value"], window["start"], window["end"])


def _iso_now(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_monitor(settings: Settings, *, thresholds_path: str | None, events_topic: str | None, core_share: float) -> None:
    """Run until SIGINT/SIGTERM (blocking)."""
    configure(settings)  # every client of this process: the security settings of `settings`
    check_reachable(settings)
    loop = MonitorLoop(settings, thresholds=Thresholds.load(thresholds_path), events_topic=events_topic, core_share=core_share)
    health = ServiceHealth("monitor", loop._admin.list_topics, working=lambda: _working(loop))
    health.serve(settings.metrics_port, settings.metrics_host, gauges.REGISTRY)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: loop.stop.set())
    log.warning(
        "monitor of group %s: %s -> %s, metrics on port %s", loop.group, ", ".join(loop.roles), loop.monitoring_topic,
        settings.metrics_port or "off",
    )
    try:
        loop.run(settings.ready_file, beat=health.beat)
    finally:
        health.close()


def _working(loop: MonitorLoop) -> str | None:
    try:
        return None if loop.consumer.assignment() else "no partition of its topics assigned yet"
    except RuntimeError:  # the consumer is closed: the monitor is stopping
        return "stopping"
