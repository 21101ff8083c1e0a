"""Prometheus metrics of the drift monitor: `sluice monitor` serves `REGISTRY` on /metrics, and nothing else.

The worker's series (stream.metrics) are made at import time in
prometheus_client's default registry, which this process imports too; the
monitor's /metrics serves its own registry instead, so it is never counted
as a worker (no `sluice_ready`, no worker counters). The collectors below are
also in the default registry, for tools that read every Sluice series of a
process (the deploy checks, the status page's tests).

Label values are bounded: `model_version` by the versions the monitor
keeps (at most 8; an evicted version's series are removed), `feature` by
the model's features plus "score", the entity keys and "attribution",
`statistic` and `reason` by fixed lists, `partition` by the topics'
partitions.
"""

from __future__ import annotations

import warnings

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from stream import metrics  # noqa: F401 - before any metric is made: it fixes their value class

# Importing Feast sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client then warns at every removal of a series
# (an evicted version's, the open-alert counts'). The values here are plain in-process ones (stream.metrics
# sets the value class), so removal works and the warning is noise in the monitor's log.
warnings.filterwarnings("ignore", message=r"(Clearing|Removal of) labels has not been implemented in\s+multi-process mode")

#: What the monitor's /metrics serves: its own series and its process facts (CPU, memory).
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
INFO = Gauge(
    "sluice_monitor_info", "1: this endpoint is `sluice monitor` of the consumer group (not a worker)", ["group"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "sluice_errors_total", "Errors the monitor recovered from, by kind (the worker's counter of the same name)", ["kind"],
    registry=REGISTRY,
)

DRIFT = Gauge(
    "sluice_drift_statistic", "Drift of a feature (or the score) in the last window against the model's reference",
    ["model_version", "feature", "statistic"],
)
QUALITY = Gauge(
    "sluice_data_quality_ratio",
    "Share of the last window's events: missing value, defaulted batch feature, outside the training range, unseen entity",
    ["model_version", "feature", "statistic"],
)
ATTRIBUTION_NDCG = Gauge(
    "sluice_attribution_ndcg", "nDCG of the features ranked by mean |contribution| in the last window, gains from training",
    ["model_version"],
)
ATTRIBUTION = Gauge(
    "sluice_attribution_mean_abs_contribution", "Mean |TreeSHAP contribution| (log-odds) of a feature in the last window",
    ["model_version", "feature"],
)
OUTCOME_RATIO = Gauge(
    "sluice_outcome_ratio", "Share of the worker's outcomes in the last rate window that were dead letters or late, by reason",
    ["outcome", "reason"],
)
ATTRIBUTED_ROWS = Gauge(
    "sluice_monitor_attributed_rows", "Rows with contributions in the last judged window (nDCG needs min_attribution_rows)",
    ["model_version"],
)
WINDOW_EVENTS = Gauge("sluice_monitor_window_events", "Events in the last judged drift window", ["model_version"])
WINDOW_BOUNDS = Gauge(
    "sluice_monitor_window_seconds", "Event-time start and end (exclusive) of the last judged drift window, epoch s",
    ["model_version", "bound"],
)
ALERTS_OPEN = Gauge("sluice_alerts_open", "Open monitoring alerts", ["statistic", "severity"])
ALERTS = Counter("sluice_alerts_total", "Alert and recovery records written to the monitoring topic", ["kind", "statistic"])
MESSAGES = Counter("sluice_monitor_messages_total", "Messages the monitor read, by topic role", ["topic"])
DROPPED = Gauge(
    "sluice_monitor_dropped_records", "Prediction-log records whose sub-window had already left the windows (since start)"
)
STATE_BYTES = Gauge("sluice_monitor_state_bytes", "Memory held by the monitor's windows (histograms, counters, sums)")
SAMPLE_RATIO = Gauge("sluice_monitor_attribution_sample_ratio", "Share of events sampled for attribution drift")
ATTRIBUTION_SECONDS = Counter(
    "sluice_monitor_attribution_seconds_total", "Time spent computing contributions (rate() is the share of a core)"
)
STEP_SECONDS = Histogram(
    "sluice_monitor_step_seconds", "Time per monitor step and micro-batch", ["step"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
CONSUMER_LAG = Gauge(
    "sluice_consumer_lag_messages", "Messages a consumer group has not committed yet, per partition",
    ["group", "topic", "partition"],
)
_EXPERIMENT = ["challenger", "metric"]
EXPERIMENT_EFFECT = Gauge(
    "sluice_experiment_effect", "Champion's mean loss minus the challenger's (> 0: challenger better), as `sluice experiment report`",
    _EXPERIMENT,
)
EXPERIMENT_LOW = Gauge("sluice_experiment_interval_low", "Lower end of the effect's always-valid interval", _EXPERIMENT)
EXPERIMENT_HIGH = Gauge("sluice_experiment_interval_high", "Upper end of the effect's always-valid interval", _EXPERIMENT)
EXPERIMENT_P = Gauge("sluice_experiment_p_value", "Always-valid p-value of no difference", _EXPERIMENT)
EXPERIMENT_N = Gauge("sluice_experiment_labeled", "Labeled events the comparison uses", _EXPERIMENT)
EXPERIMENT_DECISION = Gauge(
    "sluice_experiment_decision", "The report's decision: 1 promote, -1 stop, 0 keep running", _EXPERIMENT,
)
EXPERIMENT_GAUGES = (EXPERIMENT_EFFECT, EXPERIMENT_LOW, EXPERIMENT_HIGH, EXPERIMENT_P, EXPERIMENT_N, EXPERIMENT_DECISION)
for _collector in (
    *EXPERIMENT_GAUGES, DRIFT, QUALITY, ATTRIBUTION_NDCG, ATTRIBUTION, OUTCOME_RATIO, ATTRIBUTED_ROWS, WINDOW_EVENTS, WINDOW_BOUNDS, ALERTS_OPEN, ALERTS,
    MESSAGES, DROPPED, STATE_BYTES, SAMPLE_RATIO, ATTRIBUTION_SECONDS, STEP_SECONDS, CONSUMER_LAG,
):
    REGISTRY.register(_collector)


def set_window(version: str, window: dict) -> None:
    """The last judged event-time window of `version` (a Check's window): its events and bounds.

    The status page labels its drift columns by these bounds: the window the
    values describe, not the moment they were scraped.
    """
    from stream.pipeline.events import parse_timestamp_ms

    WINDOW_EVENTS.labels(version).set(window["events"])
    for bound in ("start", "end"):
        WINDOW_BOUNDS.labels(version, bound).set(parse_timestamp_ms(window[bound]) / 1000)


def forget(version: str) -> None:
    """Remove every series of a model version the monitor no longer keeps."""
    for gauge in (DRIFT, QUALITY, ATTRIBUTION_NDCG, ATTRIBUTION, WINDOW_EVENTS, WINDOW_BOUNDS, ATTRIBUTED_ROWS):
        for family in gauge.collect():
            for sample in family.samples:
                if sample.labels.get("model_version") == version:
                    try:
                        gauge.remove(*sample.labels.values())
                    except KeyError:
                        pass  # already removed with an earlier sample of the same series



_DECISIONS = {"promote": 1, "stop": -1, "keep running": 0}


def set_experiments(result: dict | None) -> None:
    """The series of a report of stream.lifecycle.experiment_report (only the deployment in force's challengers).

    The deciding metric's decision is the report's (a sample-ratio mismatch
    included); another metric's is its own interval's, stop on a mismatch too.
    An end of an interval not bounded yet is NaN.
    """
    for gauge in EXPERIMENT_GAUGES:
        gauge.clear()
    for e in (result or {}).get("experiments", ()):
        mismatch = (e.get("sample_ratio") or {}).get("mismatch", False)
        for metric, m in e["metrics"].items():
            labels = (e["challenger"], metric)
            decision = e["decision"] if metric == e["metric"] else ("stop" if mismatch else m["decision"])
            for gauge, value in ((EXPERIMENT_EFFECT, m["effect"]), (EXPERIMENT_LOW, m["lower"]), (EXPERIMENT_HIGH, m["upper"]),
                                 (EXPERIMENT_P, m["p_value"]), (EXPERIMENT_N, m["n"]), (EXPERIMENT_DECISION, _DECISIONS[decision])):
                gauge.labels(*labels).set(float("nan") if value is None else value)
