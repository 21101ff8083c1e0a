"""One settings object, built once at start-up from flags and environment.

Every environment variable Sluice reads is listed here (and in the README).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from features.errors import SluiceError


class SettingsError(SluiceError):
    """A setting (flag or environment variable) has a value Sluice cannot use."""

#: Where reason codes can be computed (SLUICE_REASONS).
REASONS_WHERE = ("service", "inline")
#: Where the label join runs (SLUICE_LABEL_JOIN): nowhere, in the scoring worker, or in join-only workers (`sluice label-join`).
LABEL_JOIN_WHERE = ("off", "inline", "service")
#: The app id (consumer group, table prefix) of an app's join-only workers: `<app id>-join`.
JOIN_APP_SUFFIX = "-join"
#: SLUICE_LABEL_JOIN's boolean spellings, kept from when it was a flag: on meant in the scoring worker.
_LABEL_JOIN_WORDS = {"1": "inline", "true": "inline", "yes": "inline", "on": "inline",
                     "0": "off", "false": "off", "no": "off"}

ENV = {
    "bootstrap_servers": "SLUICE_BOOTSTRAP_SERVERS",
    "repo_path": "SLUICE_REPO",
    "feature_service": "SLUICE_FEATURE_SERVICE",
    "model_dir": "SLUICE_MODEL_DIR",
    "app_id": "SLUICE_APP_ID",
    "partitions": "SLUICE_PARTITIONS",
    "store": "SLUICE_STORE",
    "metrics_port": "SLUICE_METRICS_PORT",
    "data_dir": "SLUICE_DATA_DIR",
    "log_level": "SLUICE_LOG_LEVEL",
    "ready_file": "SLUICE_READY_FILE",
    "predictions_topic": "SLUICE_PREDICTIONS_TOPIC",
    "prediction_log_topic": "SLUICE_PREDICTION_LOG_TOPIC",
    "changelog_fence": "SLUICE_CHANGELOG_FENCE",
    "online_push_interval_s": "SLUICE_ONLINE_PUSH_INTERVAL_S",
    "warm_state": "SLUICE_WARM_STATE",
    "fetch_max_wait_ms": "SLUICE_FETCH_MAX_WAIT_MS",
    "prefetch_wait_ms": "SLUICE_PREFETCH_WAIT_MS",
    "clock_wait_ms": "SLUICE_CLOCK_WAIT_MS",
    "clock_tick_ms": "SLUICE_CLOCK_TICK_MS",
    "batch_max": "SLUICE_BATCH_MAX",
    "debug_batches": "SLUICE_DEBUG_BATCHES",
    "timeline_file": "SLUICE_TIMELINE_FILE",
    "standby_replicas": "SLUICE_STANDBY_REPLICAS",
    "warm_moves": "SLUICE_WARM_MOVES",
    "shutdown_grace_s": "SLUICE_SHUTDOWN_GRACE_S",
    "session_timeout_s": "SLUICE_SESSION_TIMEOUT_S",
    # Serving (stream/serving/, stream/worker/deployments.py)
    "deployments_topic": "SLUICE_DEPLOYMENTS_TOPIC",
    "registry": "SLUICE_REGISTRY",
    "monitoring_topic": "SLUICE_MONITORING_TOPIC",
    # Label join (stream/worker/labels.py)
    "label_join": "SLUICE_LABEL_JOIN",
    "labels_topic": "SLUICE_LABELS_TOPIC",
    "labeled_topic": "SLUICE_LABELED_TOPIC",
    "reason_share": "SLUICE_REASON_SHARE",
    "reason_k": "SLUICE_REASON_K",
    "reason_method": "SLUICE_REASON_METHOD",
    "reasons": "SLUICE_REASONS",
    "reasons_topic": "SLUICE_REASONS_TOPIC",
    "compiled_scorer": "SLUICE_COMPILED_SCORER",
    "store_slow_ms": "SLUICE_STORE_SLOW_MS",
    "store_retry_s": "SLUICE_STORE_RETRY_S",
    "batch_feature_ttl_s": "SLUICE_BATCH_FEATURE_TTL_S",
    # Input limits (stream/pipeline/events.py, stream/pipeline/engine.py)
    "max_message_bytes": "SLUICE_MAX_MESSAGE_BYTES",
    "max_event_ahead_ms": "SLUICE_MAX_EVENT_AHEAD_MS",
    "max_abs_value": "SLUICE_MAX_ABS_VALUE",
    # HTTP endpoints
    "metrics_host": "SLUICE_METRICS_HOST",
    "serve_port": "SLUICE_SERVE_PORT",
    "serve_settle_ms": "SLUICE_SERVE_SETTLE_MS",
    # Kafka client security (every consumer, producer and admin client)
    "security_protocol": "SLUICE_SECURITY_PROTOCOL",
    "sasl_mechanism": "SLUICE_SASL_MECHANISM",
    "sasl_username": "SLUICE_SASL_USERNAME",
    "sasl_password": "SLUICE_SASL_PASSWORD",
    "ssl_ca_file": "SLUICE_SSL_CA_FILE",
}


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str | None = None  # None: start the embedded broker
    repo_path: Path = Path("feature_repo")
    feature_service: str | None = None  # None: the repo's only FeatureService
    model_dir: Path = Path(".sluice/models")
    app_id: str = "sluice"
    partitions: int = 4
    # Faust table store. RocksDB keeps state on disk with the changelog offset
    # it holds, so a restarted worker reads only what changed since (memory://
    # re-reads the whole changelog, which on a broker without compaction grows
    # without bound). One data directory per worker process.
    store: str = "rocksdb://"
    metrics_port: int = 9464  # 0 disables the Prometheus endpoint
    data_dir: Path = Path(".sluice/data")  # Faust table data (rocksdb) and logs
    log_level: str = "warn"
    batch_max: int = 2000  # events per micro-batch at most
    session_timeout_s: float = 6.0  # consumer group session; short because Tansu joins take about half of it
    # How often a worker tells its group it is alive, and hears that the group is
    # rebalancing: a member's death is noticed at its session timeout plus up to
    # one interval, and a survivor starts its join that much after a peer's join
    # or leave (docs/operations.md, "Rebalances"). A heartbeat is one small request.
    heartbeat_interval_s: float = 0.25
    # Copies of other workers' window state each worker keeps up to date from
    # the changelogs (Faust standby tables). When a worker dies, the one that
    # takes its partitions over starts from its copy instead of reading their
    # changelogs from the start (on Tansu, which never compacts, that read
    # grows with the stream's age). Costs each worker the reading of the
    # others' changelogs; none with a single worker whatever the setting. Off
    # by default: with copies on, two workers on a backlog did 9,800-11,000
    # events/s against 19,500-21,000 without (two alternating pairs; why is
    # not established: applying the copies was 3-4 % of each worker's
    # samples), for a leave of 4.9-5.9 s instead of 8.6-10.2 and kills whose
    # process comes straight back 5.7-15.0 s against 10.2-12.4
    # (docs/operations.md, "What copies cost"). Turn them on where a lost
    # node must be taken over quickly.
    standby_replicas: int = 0
    # A partition moves to a worker only once that worker's standby copy of
    # its state is caught up (stream/worker/assignor.py): a joining worker
    # no longer reads whole changelogs inside the rebalance.
    warm_moves: bool = True
    batch_feature_ttl_s: float = 60.0
    fetch_max_wait_ms: int = 50  # how long a fetch may wait for data (Tansu looks again after half of it)
    # Fetch the other partitions while a fetch's records wait to be taken, such a fetch waiting at most this long;
    # 0 = off: aiokafka sends no fetch while records wait (stream/worker/prefetch.py).
    prefetch_wait_ms: int = 0
    # A later stage holds a record until every upstream partition has passed its place in the arrival order
    # (stream/pipeline/clock.py); after this long it goes anyway, counted in sluice_clock_released_early_total.
    clock_wait_ms: float = 30000.0
    # A later stage that has held a record this long ticks the events partitions it waits on (stream/worker/ticks.py); 0 = off.
    clock_tick_ms: float = 200.0
    debug_batches: bool = False  # log every committed group of chunks and long GC pauses
    timeline_file: str | None = None  # append each record's step times here (stream/worker/timeline.py)
    # After SIGTERM/SIGINT the worker stops within this many seconds: a stop
    # that hangs (on an unreachable broker) is cut short; whatever it had not
    # committed is replayed by the next owner of its partitions.
    shutdown_grace_s: float = 10.0
    ready_file: str | None = None  # written when the worker holds its partitions
    warm_state: str | None = None  # parquet from `sluice warm`: window state at the end of a history
    online_push_interval_s: float = 0.0  # write fresh aggregates to the Feast online store this often; 0 = off (costly: see README)
    changelog_fence: bool = True  # see stream/worker/app.py TableState.write; off is fine on Apache Kafka
    predictions_topic: str = "predictions"
    prediction_log_topic: str = "prediction_log"
    registry: str | None = None  # where deployed versions are fetched from: model_dir (None) or mlflow:<tracking URI>
    deployments_topic: str = "deployments"  # compacted control topic: what serves (stream/kafka/control.py)
    monitoring_topic: str = "monitoring"  # alerts: drift, data quality, refused models
    # Where the labels topic is joined to the prediction log (stream/worker/labels.py): "off"; "inline", in the
    # scoring worker (1/true say the same); "service", in join-only workers (`sluice label-join`, consumer group
    # <app id>-join), so the scoring worker neither reads labels nor its own prediction log.
    label_join: str = "off"
    labels_topic: str = "labels"  # event id, label, label time (schema: FeatureService tags sluice.label_*)
    labeled_topic: str = "labeled"  # the join's records: joined, correction, duplicate, unlabeled, unmatched_label
    reason_share: float = 0.0  # share of negative decisions that also get reason codes (positives always do)
    reason_k: int = 3  # reason codes per prediction (0: none), at most 10
    reason_method: str = "treeshap"  # treeshap (exact Shapley values) or path (Saabas: cheaper on large models)
    # Where reason codes are computed: "service" (`sluice reasons`, from the prediction log, off the scoring
    # path: the prediction never waits for them) or "inline" (in the scoring batch, in both records).
    reasons: str = "service"
    reasons_topic: str = "reasons"  # `sluice reasons`' records: event id, version, top-k contributions
    # Score with lleaves (the `compiled` extra) once its scores equal LightGBM's on this many real rows,
    # per model version (stream/serving/compiled.py); 0 = off: LightGBM alone.
    compiled_scorer: int = 0
    store_slow_ms: float = 500.0  # an online-store lookup slower than this bypasses the store for store_retry_s
    store_retry_s: float = 5.0
    # Input limits: a message over max_message_bytes, an event time more than
    # max_event_ahead_ms ahead of its Kafka timestamp, a number whose absolute
    # value exceeds max_abs_value: each is dead-lettered with the reason.
    max_message_bytes: int = 1_000_000
    max_event_ahead_ms: int = 3_600_000
    max_abs_value: float = 1e15
    metrics_host: str = "127.0.0.1"  # address of /metrics and the health endpoints (and of /score)
    serve_port: int = 0  # POST /score, GET /features/{entity} in the worker (stream/worker/serve.py); 0 = off
    serve_settle_ms: float = 1000.0  # longest a request waits for its entity's answered events to be scored; 0 = never
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)  # never logged
    ssl_ca_file: str | None = None

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = {}
        for name, var in ENV.items():
            raw = os.environ.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _parse(var, raw, cls.__dataclass_fields__[name].type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("repo_path", "model_dir", "data_dir"):
            if name in values:
                values[name] = Path(values[name])
        return cls(**values)

    def __post_init__(self):
        raw = str(self.label_join).lower()  # a bool too: True -> "true"
        where = _LABEL_JOIN_WORDS.get(raw, raw)
        if where not in LABEL_JOIN_WHERE:
            msg = f"{ENV['label_join']}={self.label_join!r} is not valid: expected one of {', '.join(LABEL_JOIN_WHERE)} (1 means inline)"
            raise SettingsError(msg)
        object.__setattr__(self, "label_join", where)
        if self.reasons not in REASONS_WHERE:
            msg = f"{ENV['reasons']}={self.reasons!r} is not valid: expected one of {', '.join(REASONS_WHERE)}"
            raise SettingsError(msg)

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    @property
    def join_app_id(self) -> str:
        """The Faust app id (consumer group, table names) of the join-only workers: `<app id>-join`."""
        return self.app_id + JOIN_APP_SUFFIX

    @property
    def scoring_reason_k(self) -> int:
        """Reason codes the scoring batch computes per prediction: none when the reasons service computes them."""
        return self.reason_k if self.reasons == "inline" else 0


def _parse(var: str, raw: str, field_type: str):
    """One environment value in its field's type; a bad value names the variable and what it expects."""
    field_type = str(field_type)
    try:
        if field_type == "bool":
            lowered = raw.lower()
            if lowered not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        if field_type == "float":
            return float(raw)
        if "int" in field_type and "str" not in field_type:
            return int(raw)
    except ValueError:
        kind = {"bool": "true or false"}.get(field_type, "a number" if field_type == "float" else "an integer")
        msg = f"environment variable {var}={raw!r} is not valid: expected {kind}"
        raise SettingsError(msg) from None
    if "Path" in field_type:
        return Path(raw)
    return raw
