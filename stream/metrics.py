"""Prometheus metrics of the worker (served on `--metrics-port`, path /metrics)."""

from __future__ import annotations

import threading

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server, values
from prometheus_client.core import HistogramMetricFamily

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
    "sluice_stage_seconds", "Time per micro-batch step", ["step"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
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
READY = Gauge("sluice_ready", "1 once the worker holds its partitions")
STATE_ENTITIES = Gauge("sluice_state_entities", "Entities with window state in this worker", ["stage"])


def serve(port: int) -> None:
    """Start the /metrics endpoint; port 0 leaves it off."""
    if port:
        start_http_server(port, addr="0.0.0.0")
