"""The Faust worker: one agent per stage (one actor per partition), window state in changelog-backed tables.

Per micro-batch (chunk) and partition the order is fixed, and it is what
makes a crash harmless: (1) compute, (2) produce every output and wait until
the broker has them, (3) write the new state to the table (changelog) and
wait for it, (4) ack, so Faust commits the offsets. A crash before (3)
replays the batch with the old state and the same results; a crash after it
is recognised by the state (`applied_seq`, per-partition done marker) and
nothing is emitted twice.

Steps (2)-(4) run in a per-partition committer while the partition's actor
computes the next chunks from the pending state (an overlay over the table).
The committer commits in chunk order and in groups: once the oldest
uncommitted chunk's outputs are on the broker, it takes every chunk after it
whose outputs are on the broker too, writes their merged state in one go and
acks them in order. State writes cost two broker round trips (records, then
the fence), so grouping keeps a stream of small chunks (low input rates,
short fetch waits) from queueing behind them. At most `MAX_IN_FLIGHT` chunks
per partition are uncommitted.

A stage computes the chunks its actors receive within `GATHER_S` of each
other in one call (`stream.worker.gather`, `Engine.process_many`): the fixed cost of a
computation is paid once for all partitions of a fetch, and the event loop,
which also takes the next fetch, is blocked once instead of once per
partition.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import faust

from features.errors import SluiceError
from features.feast_repo import load_plan, open_store
from stream import metrics
from stream.feast.online_push import OnlinePusher
from stream.feast.online_read import BatchFeatureCache
from stream.feast.unchecked import offline_store_unvalidated
from stream.kafka.clients import ensure_topics, topic_partition_counts
from stream.kafka.delivery import Deliveries
from stream.kafka.topics import AppTopics
from stream.pipeline.engine import Engine
from stream.pipeline.vectors import BatchFeatures
from stream.registry import CHAMPION, LocalStore, ModelStore, local_folder, open_registry
from stream.serving.compiled import with_compiled
from stream.serving.model import load_model
from stream.serving.scorer import Serving
from stream.settings import Settings
from stream.worker import rebalance_log
from stream.worker.agents import stage_agent
from stream.worker.assignor import WarmingAssignor, watch_warmups
from stream.worker.broker_watch import EXIT_LOG_LOST, BrokerWatch, exit_with, lost_log_line, producer_fatal
from stream.worker.committer import COMMITTERS
from stream.worker.consumer import ChunkingApp
from stream.worker.credentials import faust_credentials
from stream.worker.deployments import Deployer
from stream.worker.health import HEALTH_INTERVAL_S, Health
from stream.worker.labels import add_label_join
from stream.worker.membership import MemberFile
from stream.worker.restored import restored_copies
from stream.worker.serve import ScoreServer, Served
from stream.worker.standby import StandbyTable
from stream.worker.state import ROCKS_STATES, TableState
from stream.worker.tables import PromptTableManager
from stream.worker.ticks import Ticker
from stream.worker import timeline

log = logging.getLogger("sluice.worker")


def build_engine(settings: Settings, registry: ModelStore | None = None) -> tuple[Engine, object]:
    with offline_store_unvalidated():  # online reads only: no dask import at every start (stream/feast/unchecked.py)
        store = open_store(settings.repo_path)
    plan = load_plan(store, settings.feature_service)
    model = load_model(_champion_folder(registry or open_registry(settings)), expected_features=plan.vector)
    model = with_compiled(model, settings.compiled_scorer)
    cache = BatchFeatureCache(store, plan.batch_views, ttl_s=settings.batch_feature_ttl_s)
    engine = Engine(
        plan,
        AppTopics.for_plan(settings, plan),
        settings.app_id,
        batch_max=settings.batch_max,
        n_sources=settings.partitions,
        max_message_bytes=settings.max_message_bytes,
        max_event_ahead_ms=settings.max_event_ahead_ms,
        max_abs_value=settings.max_abs_value,
        serving=Serving.alone(
            model, reason_share=settings.reason_share, reason_k=settings.scoring_reason_k,
            reason_method=settings.reason_method,
        ),
        batch=BatchFeatures(cache, slow_ms=settings.store_slow_ms, retry_s=settings.store_retry_s),
    )
    return engine, store


def _champion_folder(registry: ModelStore):
    """The champion to start with: the model directory's (load_model follows its pointer), or the registry's `champion` alias."""
    if isinstance(registry, LocalStore):
        return registry.root
    return registry.folder(registry.resolve(CHAMPION))


def faust_app(settings: Settings, app_id: str) -> ChunkingApp:
    """The Faust app of a worker: `app_id` is its consumer group and prefixes its tables' changelogs."""
    bootstrap = settings.bootstrap_servers
    app = ChunkingApp(
        app_id,
        broker=f"kafka://{bootstrap}",
        store=settings.store,
        datadir=str(settings.data_dir / app_id),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        value_serializer="raw",
        key_serializer="raw",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=settings.standby_replicas,
        Table=StandbyTable,
        TableManager=PromptTableManager,
        PartitionAssignor=WarmingAssignor if settings.warm_moves else "faust.assignor:PartitionAssignor",
        web_enabled=False,
        stream_buffer_maxsize=64,
        broker_max_poll_records=settings.batch_max,
        broker_credentials=faust_credentials(settings),
    )
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.prefetch_wait_ms = settings.prefetch_wait_ms
    app.bootstrap_servers = bootstrap
    watch_warmups(app)
    rebalance_log.install(app)
    return app


def build_app(settings: Settings, engine: Engine) -> faust.App:
    bootstrap = settings.bootstrap_servers
    app = faust_app(settings, settings.app_id)
    app.chunked_topics = frozenset(engine.repartition_topics)
    timeline.start(settings.timeline_file)

    warm = _warm_lookup(settings)
    pusher = _online_pusher(app, settings, engine)
    ticker = _ticker(app, settings, engine)
    marked: list[str] = []
    states: list[TableState] = []
    served = Served(engine, settle_s=settings.serve_settle_ms / 1000) if settings.serve_port else None
    for stage in range(len(engine.stages)):
        topic = app.topic(
            engine.repartition_topics[stage], partitions=settings.partitions, key_type=bytes, value_type=bytes
        )
        table = app.Table(f"state-{stage}", partitions=settings.partitions, key_type=bytes, value_type=bytes)
        # One actor per stage and partition, each waiting only for its own
        # chunks' deliveries; one producer per stage.
        state = TableState(table, Deliveries(bootstrap, on_fatal=producer_fatal), fence=settings.changelog_fence, warm=warm)
        marked.append(table.changelog_topic.get_topic_name())
        states.append(state)
        agent = stage_agent(
            engine, stage, state, pusher, settings.debug_batches, settings.clock_wait_ms, ticker if stage == 1 else None,
            served, app,
        )
        app.agent(topic, name=f"stage-{stage}", isolated_partitions=True)(agent)

    app.marked_topics = frozenset(marked)
    if settings.label_join == "inline":  # "service": join-only workers do it (stream/worker/join_app.py)
        add_label_join(app, settings, engine.plan)
    server = _serve(app, settings, engine, states, served) if served is not None else None

    def assigned() -> None:
        log.info("sluice worker assigned: stages=%s model=%s", [list(s) for s in engine.stages], engine.serving.deployment.champion)

    report_health(app, settings, list(engine.repartition_topics), assigned, server)
    return app


def _serve(app: faust.App, settings: Settings, engine: Engine, states: list[TableState], served: Served) -> ScoreServer:
    """`POST /score` and `GET /features/{entity}` in this process (stream.worker.serve)."""
    return ScoreServer(app, engine, states, served, settings)



def _warm_lookup(settings: Settings):
    if not settings.warm_state:
        return None
    from features.warm import WarmLookup, load

    warm = WarmLookup(load(settings.warm_state))
    log.info("warm start: %d entity states from %s", len(warm.warm), settings.warm_state)
    return warm


def _ticker(app: faust.App, settings: Settings, engine: Engine) -> Ticker | None:
    """Ticks for the events partitions the stage after the first hop waits on (stream/worker/ticks.py)."""
    if len(engine.stages) < 2 or settings.clock_tick_ms <= 0:
        return None
    return Ticker(engine.repartition_topics[0], Deliveries(settings.bootstrap_servers, on_fatal=producer_fatal), settings.clock_tick_ms)


def _online_pusher(app: faust.App, settings: Settings, engine: Engine) -> OnlinePusher | None:
    if settings.online_push_interval_s <= 0:
        return None
    pusher = OnlinePusher(settings.repo_path, engine.plan, settings.online_push_interval_s)

    @app.task
    async def start_pusher() -> None:
        pusher.start()

    @app.on_before_shutdown.connect
    def stop_pusher(sender, **kwargs) -> None:
        pusher.stop()

    return pusher


def report_health(
    app: faust.App, settings: Settings, inputs: list[str], assigned, server: ScoreServer | None = None,
) -> None:
    """Readiness follows rebalances, stalls and the broker (see stream.worker.health); the ready file marks the first assignment.

    `inputs`: the topics the app consumes; `assigned()` logs what it holds once partitions are assigned.
    """
    data_dir = settings.data_dir / app.conf.id

    def lost(evidence: str) -> None:
        exit_with(lost_log_line(settings.bootstrap_servers, evidence, str(data_dir)), EXIT_LOG_LOST)

    def watched() -> list[str]:
        return [*inputs, *(t.changelog_topic.get_topic_name() for t in app.tables.values())]

    # Started now, not as an app task: Faust starts those after the first
    # rebalance may already have completed, and readiness waits for an answer.
    watch = BrokerWatch(settings.bootstrap_servers, app.conf.id, watched, list(inputs), lost).start()
    health = Health(COMMITTERS, watch)
    generations: list[int] = []

    @app.on_partitions_revoked.connect
    async def revoked(sender, revoked, **kwargs) -> None:
        health.assigned = False  # a rebalance: nothing is processed until it completes
        for rocks in ROCKS_STATES:
            rocks.cache.clear()  # the restore that follows writes to RocksDB directly

    @app.on_rebalance_complete.connect
    async def ready(sender, **kwargs) -> None:
        # A group's generation only grows while it has members: a lower one
        # means the broker forgot the group (and with it the committed offsets).
        generation = app.consumer_generation_id
        if generations and generation < generations[-1]:
            lost(f"the consumer group's generation went back from {generations[-1]} to {generation}")
        generations.append(generation)
        for name in ("aiokafka", "faust", "mode"):
            logging.getLogger(name).setLevel(max(logging.getLogger().level, logging.WARNING))
        health.assigned = True
        health.update()
        # The demo and tests wait for this file (written once), and with serving on, for /score.
        if server is not None and not server.listening.is_set():
            # Started here, not as an app task (those may start after the first
            # assignment, and waiting for one here would hold up recovery): the
            # ready file promises /score.
            await app.add_runtime_dependency(server)
        # A worker still catching up on partitions that are to move to it (stream.worker.assignor) does not hold them yet.
        warming = getattr(app.assignor, "warming", None)
        if settings.ready_file and not warming and not Path(settings.ready_file).exists():
            Path(settings.ready_file).write_text("ready\n")
        assigned()

    @app.timer(HEALTH_INTERVAL_S)
    async def check_health() -> None:
        health.update()


def tune_gc(debug: bool = False) -> None:
    """Keep the cyclic garbage collector off the hot path.

    A micro-batch allocates hundreds of thousands of short-lived containers
    (records, rows, output dicts), so CPython's default threshold (700) runs a
    collection every few events, and each older-generation pass walks every
    object the worker holds (Feast registry, model, decoded state cache).
    Measured on the engine alone: 180 -> 100 µs per event. What was allocated
    at start-up is frozen out of collection; young collections run every
    50,000 allocations.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    started: list[float] = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        pause = time.perf_counter() - started[0]
        metrics.GC_PAUSE.labels(str(info["generation"])).observe(pause)
        if debug and pause > 0.02:
            log.warning("gc generation %d paused %.0f ms (%d collected)", info["generation"], pause * 1e3, info["collected"])

    gc.callbacks.append(timed)


def run_worker(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM (blocking)."""
    registry = open_registry(settings)  # the process's one handle on the model store
    engine, _store = build_engine(settings, registry)
    settings = _sized_by_events(settings, engine.plan.schema.topic)
    engine.n_sources = settings.partitions
    names = engine.topics
    topics = [*engine.repartition_topics, names.dlq, names.late, names.predictions, names.prediction_log, names.monitoring]
    ensure_topics(settings.bootstrap_servers, topics, settings.partitions)
    app = build_app(settings, engine)
    _refuse_other_sizes(settings, [*engine.repartition_topics[1:], *(t.changelog_topic.get_topic_name() for t in app.tables.values())])
    # What serves is decided before the worker takes partitions: the newest deployment that loads.
    deployer = Deployer(engine, settings, folder_of=local_folder(registry))
    deployer.start()
    metrics.WORKER_INFO.labels(settings.app_id).set(1)  # what the status page counts as a worker
    run_app(app, settings, settings.app_id)


def run_app(app: faust.App, settings: Settings, app_id: str) -> None:
    """Serve /metrics, then run `app` as a Faust worker until SIGINT/SIGTERM (blocking); its data under `app_id`."""
    metrics.serve(settings.metrics_port, settings.metrics_host)
    (settings.data_dir / app_id).mkdir(parents=True, exist_ok=True)
    # Before the first join: the member a killed predecessor left in the group (stream/worker/membership.py).
    app.member_file = MemberFile(settings.data_dir / app_id)
    if isinstance(app.assignor, WarmingAssignor):  # before the first join: a restart's copies on disk
        app.assignor.restored = restored_copies(app, settings.bootstrap_servers)
    tune_gc(settings.debug_batches)
    from stream.worker.logs import Worker  # faust.Worker, with escape codes only on a terminal

    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.shutdown_grace_s = settings.shutdown_grace_s
    worker.execute_from_commandline()


def _sized_by_events(settings: Settings, events_topic: str) -> Settings:
    """Settings whose partition count is the events topic's, where that topic exists.

    State follows its input partition (a chunk of events partition p writes
    its table's partition p), so every topic of the worker has as many
    partitions as the events topic. --partitions (SLUICE_PARTITIONS) only
    sizes an events topic the worker creates itself.
    """
    found = topic_partition_counts(settings.bootstrap_servers, [events_topic]).get(events_topic)
    if not found or found == settings.partitions:
        return settings
    log.warning(
        "the events topic %s has %d partitions: the worker uses %d (--partitions/SLUICE_PARTITIONS=%d sizes only a missing events topic)",
        events_topic, found, found, settings.partitions,
    )
    return settings.with_(partitions=found)


def _refuse_other_sizes(settings: Settings, internal_topics: list[str]) -> None:
    """Raise SluiceError if an existing repartition or changelog topic has another partition count than the events topic."""
    n = settings.partitions
    counts = topic_partition_counts(settings.bootstrap_servers, internal_topics)
    other = {topic: count for topic, count in counts.items() if count != n}
    if other:
        listed = ", ".join(f"{topic} ({count})" for topic, count in sorted(other.items()))
        msg = (
            f"the events topic has {n} partitions but this app's internal topics have other counts: {listed}; "
            f"delete those topics (and the worker's data directory {settings.data_dir / settings.app_id}) "
            f"or start the worker with a new --app-id, and they are made again with {n} partitions"
        )
        raise SluiceError(msg)
