"""Prometheus metrics of the worker and its health endpoints.

One small HTTP server (a thread; `--metrics-port`, address SLUICE_METRICS_HOST,
127.0.0.1 unless told otherwise) answers three paths and nothing else:

* `/metrics`: every metric below, in Prometheus' text format;
* `/livez`: 200 while the worker's event loop calls `beat()` (the `heartbeat`
  task does, every second), 503 once no beat came for `liveness_timeout_s`
  (30 s): the loop is blocked or dead, and restarting is the cure;
* `/readyz`: 200 while `sluice_ready` is 1 (the worker holds its partitions),
  else 503.

Every other path is a 404, every method but GET and HEAD a 405. The
services beside the worker (monitor, rollout controller) serve their own
registry and probes through the same server (stream/health_http.py).
"""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
import urllib.parse

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, values
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

from features.errors import SluiceError

# Importing Feast sets PROMETHEUS_MULTIPROC_DIR, which switches every metric
# created afterwards to memory-mapped files (a pid check and an mmap write
# per update: measured at 3.5% of the worker's CPU). The worker is one
# process serving its own /metrics, so its metrics keep plain in-process values.
values.ValueClass = values.MutexValue

EVENTS_IN = Counter("sluice_events_in_total", "Messages consumed, per stage", ["stage"])
PREDICTIONS_OUT = Counter("sluice_predictions_total", "Predictions produced", ["model_version"])
DLQ = Counter("sluice_dlq_total", "Events sent to the dead-letter topic", ["reason"])
LATE = Counter("sluice_late_total", "Events beyond the allowed lateness, sent to the late topic", ["stage"])
REPLAYED = Counter("sluice_replayed_total", "Events skipped on replay because their outputs already exist", ["stage"])
# The arrival clock (stream/pipeline/clock.py): a later stage folds records in the events log's order.
CLOCK_HELD = Gauge(
    "sluice_clock_held", "Records a later stage holds until every upstream partition has passed them", ["stage", "partition"]
)
CLOCK_EARLY = Counter(
    "sluice_clock_released_early_total",
    "Records released after SLUICE_CLOCK_WAIT_MS before every upstream partition had passed them (features may then depend on timing)",
    ["stage"],
)
CLOCK_TICKS = Counter("sluice_clock_ticks_total", "Ticks appended to idle events partitions (stream/worker/ticks.py)")
CLOCK_OUT_OF_ORDER = Counter(
    "sluice_clock_out_of_order_total", "Records that arrived behind records already released early, folded where they arrived", ["stage"]
)
BATCH_SIZE = Histogram(
    "sluice_batch_size", "Events per micro-batch", ["stage"], buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
)
class BatchHistogram:
    """A Prometheus histogram fed a whole micro-batch of observations at once.

    `Histogram.observe` takes a lock and walks the buckets per value (about
    5 µs); per event that was a measurable share of the worker's CPU. Here a
    batch costs one `searchsorted` and one `bincount`. Exposed through the
    registry's public custom-collector interface, in the standard histogram
    format.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry=REGISTRY):
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_many(self, values_s) -> None:
        array = np.asarray(values_s, dtype=np.float64)
        if not len(array):
            return
        # Prometheus buckets are "less than or equal to" their upper bound.
        counts = np.bincount(np.searchsorted(self.bounds, array, side="left"), minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(array.sum())

    def collect(self):
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        buckets = [(_bound(b), float(c)) for b, c in zip(self.bounds.tolist(), cumulative)]
        buckets.append(("+Inf", float(cumulative[-1])))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family


def _bound(value: float) -> str:
    return repr(float(value))


LATENCY = BatchHistogram(
    "sluice_event_to_prediction_seconds",
    "From the event's Kafka timestamp to its prediction being produced",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STAGE_SECONDS = Histogram(
    "sluice_stage_seconds", "Time per micro-batch step", ["step"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.5),
)
ONLINE_STALENESS = Histogram(
    "sluice_online_store_staleness_seconds",
    "From an event's Kafka timestamp to its aggregates being written to the Feast online store",
    buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30),
)
GC_PAUSE = Histogram(
    "sluice_gc_pause_seconds",
    "Cyclic garbage collector pauses, by generation",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
# Serving: routes, shadows, fallbacks, rules, reason codes, deployments (stream/serving/).
ROUTED = Counter("sluice_routed_total", "Predictions by the route that chose their model", ["route"])
SHADOW_SCORES = Counter("sluice_shadow_scores_total", "Scores logged by versions that did not answer", ["model_version"])
FALLBACKS = Counter("sluice_fallbacks_total", "Events answered by the fallback chain, by why", ["reason"])
MODEL_ERRORS = Counter("sluice_model_errors_total", "Batches on which a model raised", ["model_version"])
UNANSWERED = Counter("sluice_unanswered_total", "Events no model or rule could answer (dead-lettered)")
RULE_DECISIONS = Counter("sluice_rule_decisions_total", "Decisions made by a business rule, by kind", ["rule"])
REASON_CODES = Counter("sluice_reason_codes_total", "Predictions given reason codes")
EXPLORED = Counter("sluice_explored_total", "Would-be blocks let through by exploration (logged with their propensity)")
STORE_TRIPS = Counter("sluice_online_store_trips_total", "Times the online store was bypassed, by why", ["reason"])
MODEL_LOAD_FAILURES = Counter("sluice_model_load_failures_total", "Model versions refused at load (the old one kept serving)")
COMPILED_SCORER = Counter(
    "sluice_compiled_scorer_total",
    "Compiled scorers (SLUICE_COMPILED_SCORER) per model version: serving after the equality gate, refused, unavailable",
    ["outcome"],
)
DEPLOYMENT_APPLY_SECONDS = Histogram(
    "sluice_deployment_apply_seconds", "From a deployment record read to the switch (loading and verifying its models)",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
DEPLOYMENT_SEQ = Gauge("sluice_deployment_seq", "Sequence number of the deployment this worker applies")
MODEL_INFO = Gauge("sluice_model_info", "1 for each model version loaded, by role", ["model_version", "role"])
ERRORS = Counter("sluice_errors_total", "Errors a process recovered from or died of, by kind", ["kind"])
READY = Gauge("sluice_ready", "1 while the worker holds its partitions, the broker answers and no partition is stuck")
#: Why the worker is not ready, for the /readyz body (set with READY by set_ready).
_not_ready_because = "starting: partitions not assigned yet"


def set_ready(ready: bool, why: str = "") -> None:
    """Readiness and, when not ready, the reason /readyz gives."""
    global _not_ready_because
    if not ready:
        _not_ready_because = why or "unknown"
    READY.set(1 if ready else 0)
#: Set by the worker process only (other processes import these metrics too): what the status page counts as a worker.
WORKER_INFO = Gauge("sluice_worker_info", "1: this endpoint is a Sluice worker of the consumer group", ["app_id"])
STATE_ENTITIES = Gauge("sluice_state_entities", "Entities with window state in this worker", ["stage"])
SERVE_REQUESTS = Counter("sluice_serve_requests_total", "Requests to the worker's /score and /features, by HTTP status", ["path", "status"])
SERVE_SECONDS = Histogram(
    "sluice_serve_seconds", "Time to answer /score: features, scoring and the event's delivery to the events topic",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
SERVE_STEP_SECONDS = Histogram(
    "sluice_serve_step_seconds",
    "Where an answered /score request's time goes: settle (waiting for its card's answered events to be scored), "
    "queue (from asking to its computation starting: the gathering and whatever ran in the event loop meanwhile), "
    "compute (the computation it was part of), deliver (its event's delivery to the events topic)",
    ["step"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
SERVE_ASKED_TOGETHER = Histogram(
    "sluice_serve_asked_together", "Requests per computation of /score answers", buckets=(1, 2, 3, 5, 10, 20, 50, 100)
)
SERVE_CONSISTENCY = Counter(
    "sluice_serve_consistency_total",
    "Synchronous answers compared with the stream's prediction of the same event: equal, differs, unseen",
    ["outcome"],
)


#: The paths the endpoint answers (deployment files are checked against these).
METRICS_PATH, LIVENESS_PATH, READINESS_PATH = "/metrics", "/livez", "/readyz"
#: Seconds without a heartbeat after which /livez answers 503.
LIVENESS_TIMEOUT_S = 30.0
_last_beat = time.monotonic()


def beat() -> None:
    """The event loop is alive: call at least every second from the worker's loop."""
    global _last_beat
    _last_beat = time.monotonic()


async def heartbeat(interval_s: float = 1.0) -> None:
    """Beat every `interval_s` for as long as the running event loop turns (run it as a task)."""
    while True:
        beat()
        await asyncio.sleep(interval_s)


def seconds_since_beat() -> float:
    return time.monotonic() - _last_beat


class WorkerHealth:
    """The worker's liveness and readiness: `beat()` and `set_ready()` above. None means healthy, else why not."""

    def __init__(self, liveness_timeout_s: float = LIVENESS_TIMEOUT_S):
        self.liveness_timeout_s = liveness_timeout_s

    def liveness(self) -> str | None:
        age = seconds_since_beat()
        return None if age <= self.liveness_timeout_s else f"no heartbeat from the event loop for {age:.0f} s"

    def readiness(self) -> str | None:
        return None if REGISTRY.get_sample_value("sluice_ready") == 1 else _not_ready_because


def probe_reply(health, path: str) -> tuple[int, bytes] | None:
    """The answer to a liveness or readiness probe of `health` (anything with `liveness()` and `readiness()`).

    None when `path` is neither; other HTTP servers (the status page's) answer their probes with it too.
    """
    if path == LIVENESS_PATH:
        why = health.liveness()
        return (200, b"ok\n") if why is None else (503, f"{why}\n".encode())
    if path == READINESS_PATH:
        why = health.readiness()
        return (200, b"ready\n") if why is None else (503, f"not ready: {why}\n".encode())
    return None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urllib.parse.urlsplit(self.path).path
        probe = probe_reply(self.server.health, path)
        if path == METRICS_PATH:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(self.server.registry), content_type)
        elif probe is not None:
            self._reply(*probe)
        else:
            self._reply(404, b"not found: this server answers /metrics, /livez and /readyz\n")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _refuse(self) -> None:
        self._reply(405, b"method not allowed\n", extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", extra=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 - scrapes and probes are not worth a log line
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    health = WorkerHealth()
    registry = REGISTRY


class MetricsServer:
    """The HTTP server in a daemon thread; `close()` stops it and frees the port."""

    def __init__(
        self, host: str, port: int, *, liveness_timeout_s: float = LIVENESS_TIMEOUT_S, health=None, registry=REGISTRY,
    ):
        """`health` and `registry`: another process's (a service's) probes and metrics; the worker's by default."""
        self.host = host
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6}) if ":" in host else _Server
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as exc:
            msg = (
                f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
                "pick another --metrics-port (SLUICE_METRICS_PORT), 0 to turn it off, or fix SLUICE_METRICS_HOST"
            )
            raise SluiceError(msg) from exc
        self._server.health = health or WorkerHealth(liveness_timeout_s)
        self._server.registry = registry
        self.socket_address = self._server.server_address
        self.port = self.socket_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="sluice-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(port: int, host: str = "127.0.0.1", *, liveness_timeout_s: float = LIVENESS_TIMEOUT_S) -> MetricsServer | None:
    """Start /metrics, /livez and /readyz on host:port (port 0 leaves them off).

    The liveness clock starts now: a worker that has not beaten yet (still
    starting) counts as alive until `liveness_timeout_s` has passed.
    """
    if not port:
        return None
    beat()
    return MetricsServer(host, port, liveness_timeout_s=liveness_timeout_s)
