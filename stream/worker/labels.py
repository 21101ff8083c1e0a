"""The label join in the worker: one agent per input topic, one committer per partition, a changelog-backed table.

`labels` and `prediction_log` are co-partitioned (same partition count, same
key, the same CRC32 partitioner: see stream.kafka.labels), so partition p
of both is joined by this worker with the state of partition p. Faust gives
each topic's partition its own actor; the two actors of a partition share
one `Committer`, so their chunks commit in the order they were computed,
the crash-safe order of every stage (stream/worker/app.py): outputs on the
broker, then the state, then the acks. A killed worker loses no pending
join; a chunk it had sent but not stored is computed again and sends
identical records (the guarantee: at least once, duplicates identical,
identified by event id, kind and revision; stream.lifecycle.label_join).

The worker also evaluates what it joins (stream.lifecycle.online_eval) and
exports it as Prometheus gauges per model version and route: the latest
window of prediction time of each, realized and estimated.

`LabelSender` is the label source's side: labels to the partition of their
prediction, clock records to every partition.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import faust
from prometheus_client import Counter, Gauge

from features.errors import SluiceError
from stream import metrics  # noqa: F401 - before any metric is made: it fixes their value class
from stream.kafka.clients import ensure_topics, topic_partitions
from stream.kafka.delivery import Deliveries
from stream.kafka.labels import PartitionSender
from stream.kafka.topics import LABEL_JOIN_TABLE, AppTopics
from stream.lifecycle import label_state, label_wire
from stream.lifecycle.label_join import CLOCK_KEY, LABELS, LOG, JoinConfig, LabelJoin, partition_for
from stream.lifecycle.online_eval import OnlineEvaluation
from stream.pipeline.outcomes import Message
from stream.settings import Settings
from stream.worker.committer import Chunk, Committer, chunk_number, crash
from stream.worker.state import TableState

log = logging.getLogger("sluice.labels")

#: What the committer logs as the stage of a label-join chunk.
LABEL_STAGE = 99
#: How often the online-evaluation gauges are recomputed.
GAUGE_INTERVAL_S = 5.0

OUTCOMES = Counter("sluice_label_join_total", "Label-join inputs and outcome records, by kind", ["kind"])
ONLINE = {
    name: Gauge(f"sluice_online_{name}", f"Online {doc} of the latest window of prediction time", ["version", "route"])
    for name, doc in (
        ("auc", "ROC AUC"), ("log_loss", "log loss"), ("brier", "Brier score"), ("precision", "precision at the threshold"),
        ("recall", "recall at the threshold"), ("calibration_error", "expected calibration error (10 bins)"),
    )
}
ESTIMATED = {
    name: Gauge(f"sluice_online_estimated_{name}", f"CBPE estimate of the {name} from the scores alone", ["version", "route"])
    for name in ("auc", "precision", "recall")
}
COVERAGE = Gauge("sluice_online_label_coverage_ratio", "Share of the window's predictions with a label", ["version", "route"])
DELAY = Gauge("sluice_online_label_delay_seconds", "Mean delay from event time to label time", ["version", "route"])
PROVISIONAL = Gauge("sluice_online_window_provisional", "1 while the window's labels have not matured", ["version", "route"])


class JoinState(TableState):
    """Table state whose writes reach the changelog entries first, markers next, deletions last."""

    order = staticmethod(label_state.write_order)


def join_config(settings: Settings, plan) -> JoinConfig:
    topics = AppTopics.for_plan(settings, plan)
    return JoinConfig.from_tags(
        plan.tags, plan.schema.event_id, partitions=settings.partitions, labeled_topic=topics.labeled,
        labels_topic=topics.labels, labels_dlq_topic=topics.labels_dlq, max_message_bytes=settings.max_message_bytes,
    )


def check_topics(settings: Settings, topics: AppTopics) -> None:
    """Create the label topics; labels and the prediction log must have the same partition count."""
    bootstrap = settings.bootstrap_servers
    names = [topics.labels, topics.labels_dlq, topics.labeled, topics.prediction_log]
    ensure_topics(bootstrap, names, settings.partitions)
    for topic in (topics.labels, topics.prediction_log):
        found = topic_partitions(bootstrap, topic)
        if found != settings.partitions:
            msg = (
                f"the label join needs {topic} with {settings.partitions} partitions (SLUICE_PARTITIONS), it has {found}; "
                "labels and the prediction log must be co-partitioned"
            )
            raise SluiceError(msg)


class _Shared:
    """The committer of each partition, shared by the partition's two actors."""

    def __init__(self, state: TableState, debug: bool):
        self.state, self.debug = state, debug
        self.held: dict[int, list] = {}  # partition -> [committer, actors holding it]

    def acquire(self, partition: int) -> Committer:
        held = self.held.get(partition)
        if held is None:
            held = self.held[partition] = [Committer(LABEL_STAGE, self.state, None, partition, self.debug), 0]
        held[1] += 1
        return held[0]

    async def release(self, partition: int) -> None:
        held = self.held.get(partition)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del self.held[partition]
            await held[0].close()


def add_label_join(app: faust.App, settings: Settings, plan) -> None:
    """Register the label join's agents and table on `app`: the scoring worker's (SLUICE_LABEL_JOIN=inline) or a join-only worker's.

    The table is named after the app (`<app id>-label-join-changelog`), so an
    inline join and a join service of the same pipeline keep separate state.
    """
    topics = AppTopics.for_plan(settings, plan)
    check_topics(settings, topics)
    config = join_config(settings, plan)
    join = LabelJoin(config)
    table = app.Table(LABEL_JOIN_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes)
    state = JoinState(table, Deliveries(settings.bootstrap_servers), fence=settings.changelog_fence)
    app.marked_topics = frozenset(app.marked_topics) | {table.changelog_topic.get_topic_name()}
    app.chunked_topics = frozenset(app.chunked_topics) | {topics.labels, topics.prediction_log}
    shared = _Shared(state, settings.debug_batches)
    evaluation = OnlineEvaluation(config.id_field, label_window_ms=config.window_ms)
    for role, name in ((LABELS, topics.labels), (LOG, topics.prediction_log)):
        topic = app.topic(name, partitions=settings.partitions, key_type=bytes, value_type=bytes)
        agent = _agent(role, join, state, shared, evaluation)
        app.agent(topic, name=f"label-join-{role}", isolated_partitions=True)(agent)

    @app.timer(GAUGE_INTERVAL_S)
    async def publish_online_metrics() -> None:
        publish(evaluation)


def _agent(role: str, join: LabelJoin, state: TableState, shared: _Shared, evaluation: OnlineEvaluation):
    async def agent(stream):
        committer, partition = None, None
        try:
            async for event in stream.noack().events():
                try:
                    message = event.message
                    if committer is None:
                        partition = message.partition
                        committer = shared.acquire(partition)
                    await committer.room()
                    started = time.perf_counter()
                    records = message.records
                    outcome = join.step(partition, [(role, k, v, o) for k, v, o, _ in records], state)
                    number = chunk_number()
                    state.stage(outcome.writes, number)
                    sent = state.deliveries.send(outcome.outputs)
                    first, last = records[0], records[-1]
                    ends = [Message(None, None, first[2], first[3]), Message(None, None, last[2], last[3])]
                    age_ms = time.time() * 1000 - first[3]
                    committer.add(Chunk(number, [event], ends, outcome, sent, started, time.perf_counter(), age_ms))
                    _observe(outcome, evaluation)
                except asyncio.CancelledError:
                    raise
                except BaseException:
                    crash(LABEL_STAGE, event.message.partition)
        finally:
            if partition is not None:
                await shared.release(partition)

    agent.__name__ = f"label_join_{role}"
    return agent


def _observe(outcome, evaluation: OnlineEvaluation) -> None:
    for kind, n in outcome.counts.items():
        OUTCOMES.labels(kind).inc(n)
    for record in outcome.predicted:
        evaluation.add_prediction(record, dedupe=False)
    for record in outcome.records:
        evaluation.add_labeled(record, dedupe=False)


def publish(evaluation: OnlineEvaluation) -> None:
    """Set the gauges from the latest window of each (version, route); drop windows long matured."""
    latest: dict[tuple[str, str], dict] = {}
    for row in evaluation.report():
        if row["metrics"]["labeled"] or row["predictions"]:
            latest[(row["version"], row["route"])] = row  # windows come in time order
    for (version, route), row in latest.items():
        for name, gauge in ONLINE.items():
            gauge.labels(version, route).set(_finite(row["metrics"][name]))
        for name, gauge in ESTIMATED.items():
            gauge.labels(version, route).set(_finite(row["estimate"][name]))
        COVERAGE.labels(version, route).set(_finite(row["coverage"]))
        DELAY.labels(version, route).set(_finite(row["label_delay"]["mean_s"]))
        PROVISIONAL.labels(version, route).set(1.0 if row["provisional"] else 0.0)
    evaluation.prune()


def _finite(x: float) -> float:
    return float(x) if x is not None and math.isfinite(x) else math.nan


class LabelSender:
    """Labels produced where the label join reads them, and the label source's clock.

    A label must land in the partition of its event's prediction-log record;
    the worker produced that record keyed by event id with librdkafka's
    default partitioner (CRC32 of the key), so the partition is computed
    the same way (`partition_for`) and given explicitly. A producer that
    partitions otherwise (Java's default is murmur2) still works: the join
    forwards such labels, at the cost of one more hop.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, *, id_field: str, label_field: str,
                 time_field: str = "label_time"):
        self.out = PartitionSender(bootstrap, topic, partitions)
        self.partitions = partitions
        self.id_field, self.label_field, self.time_field = id_field, label_field, time_field
        self.sent = 0

    def send(self, event_id: str, label, label_time_ms: int) -> None:
        key = str(event_id).encode()
        value = label_wire.label_value(self.id_field, self.label_field, self.time_field, event_id, label, label_time_ms)
        self.out.produce(key, value, partition_for(key, self.partitions))
        self.sent += 1

    def clock(self, ms: int) -> None:
        """Tell every partition that no label with an earlier time is still to come."""
        value = label_wire.clock_value(ms)
        for partition in range(self.partitions):
            self.out.produce(CLOCK_KEY, value, partition)

    def flush(self, timeout_s: float = 30.0) -> None:
        self.out.flush(timeout_s)
