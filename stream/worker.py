"""The Faust worker: one agent per stage, window state in changelog-backed tables.

Per micro-batch and partition the order is fixed, and it is what makes a
crash harmless: (1) compute, (2) produce every output and wait until the
broker has them, (3) write the new state to the table (changelog), (4) ack,
so Faust commits the offsets. A crash before (3) replays the batch with the
old state and the same results; a crash after it is recognised by the state
(`applied_seq`, per-partition done marker) and nothing is emitted twice.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from collections import defaultdict

import faust

from features.feast_repo import load_plan, open_store
from stream import metrics
from stream.batch_features import BatchFeatureCache
from stream.engine import Engine, Message
from stream.kafka import DeliveryTracker, KafkaDeliveryError, ensure_topics, make_producer, topic_partitions
from stream.model import load_model
from stream.settings import Settings

log = logging.getLogger("sluice.worker")


class TableState:
    """The mapping the engine reads and writes, over a Faust table.

    Writes name their changelog partition explicitly: the partition of the
    batch, so state moves with its input partition on rebalance.
    """

    def __init__(self, table):
        self.table = table

    def get(self, key: str, default=None):
        return self.table.data.get(key.encode(), default)

    def write(self, partition: int, writes: dict[str, bytes]) -> None:
        data, send = self.table.data, self.table.send_changelog
        for key, value in writes.items():
            raw = key.encode()
            data[raw] = value
            send(partition, raw, value)


def build_engine(settings: Settings) -> tuple[Engine, object]:
    store = open_store(settings.repo_path)
    plan = load_plan(store, settings.feature_service)
    model = load_model(settings.model_dir, expected_features=plan.vector)
    cache = BatchFeatureCache(store, plan.batch_views, ttl_s=settings.batch_feature_ttl_s)
    engine = Engine(
        plan,
        settings.topics(plan.schema.topic),
        settings.app_id,
        model=model,
        batch_cache=cache,
        batch_max=settings.batch_max,
        batch_within_s=settings.batch_within_s,
        n_sources=settings.partitions,
    )
    return engine, store


def build_app(settings: Settings, engine: Engine) -> faust.App:
    bootstrap = settings.bootstrap_servers
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{bootstrap}",
        store=settings.store,
        datadir=str(settings.data_dir / settings.app_id),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        value_serializer="raw",
        key_serializer="raw",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        web_enabled=False,
        stream_buffer_maxsize=max(4096, settings.batch_max * 2),
    )
    producer = make_producer(bootstrap)
    tracker = DeliveryTracker()

    async def deliver(outcome) -> None:
        for out in outcome.outputs:
            while True:
                try:
                    producer.produce(out.topic, out.value, out.key, headers=out.headers, on_delivery=tracker)
                    break
                except BufferError:
                    producer.poll(0.01)
        remaining = await asyncio.get_running_loop().run_in_executor(None, producer.flush, 30.0)
        if remaining:
            msg = f"{remaining} outputs still undelivered after 30 s; the batch will be reprocessed"
            raise KafkaDeliveryError(msg)
        tracker.raise_if_failed()

    for stage in range(len(engine.stages)):
        topic = app.topic(
            engine.repartition_topics[stage], partitions=settings.partitions, key_type=bytes, value_type=bytes
        )
        table = app.Table(f"state-{stage}", partitions=settings.partitions, key_type=bytes, value_type=bytes)
        app.agent(topic, name=f"stage-{stage}")(_stage_agent(engine, stage, TableState(table), deliver))

    @app.on_rebalance_complete.connect
    async def ready(sender, **kwargs) -> None:
        # Readiness for orchestration: the demo and tests wait for this file.
        metrics.READY.set(1)
        if settings.ready_file:
            Path(settings.ready_file).write_text("ready\n")
        log.info("sluice worker assigned: stages=%s model=%s", [list(s) for s in engine.stages], engine.model.version)

    return app


def _stage_agent(engine: Engine, stage: int, state: TableState, deliver):
    async def agent(stream):
        async for events in stream.take_events(engine.batch_max, within=engine.batch_within_s):
            by_partition: dict[int, list[Message]] = defaultdict(list)
            for ev in events:
                m = ev.message
                by_partition[m.partition].append(Message(m.key, m.value, m.offset, int(m.timestamp * 1000)))
            for partition, messages in by_partition.items():
                outcome = engine.process(stage, partition, messages, state)
                await deliver(outcome)
                state.write(partition, outcome.writes)

    agent.__name__ = f"stage_{stage}"
    return agent


def run_worker(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM (blocking)."""
    engine, _store = build_engine(settings)
    n_events = topic_partitions(settings.bootstrap_servers, engine.plan.schema.topic)
    if n_events:
        engine.n_sources = n_events
    topics = [*engine.repartition_topics, *engine.topics.values()]
    ensure_topics(settings.bootstrap_servers, topics, settings.partitions)
    metrics.serve(settings.metrics_port)
    (settings.data_dir / settings.app_id).mkdir(parents=True, exist_ok=True)
    app = build_app(settings, engine)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
