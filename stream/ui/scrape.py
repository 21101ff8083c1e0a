"""The workers' Prometheus endpoints, read the way Prometheus reads them, summed over the fleet.

`--metrics-url` names one endpoint, or with `dns+http://host:port/metrics`
every address the name resolves to (one per replica of a compose service
scaled with `--scale`, or of a headless Kubernetes service), resolved again
at every scrape. Counters are summed over the workers; the latency
percentiles come from the summed histogram buckets with Prometheus'
`histogram_quantile` interpolation, so they are what a Grafana panel on the
same metrics shows; rates are per worker between two scrapes (a counter that
went down is a restarted worker: its new value is its increase).

Only worker targets count as workers and feed the fleet's counters: a
target is a worker when it exports `sluice_worker_info`, which only the
worker process sets (other processes that import the worker's metrics,
such as an older monitor serving the default registry, export its
`sluice_ready` and counters too, at 0). A target that does not answer keeps
the kind it had when it last answered ("unknown" if it never did). Raw
gauges, drift and data quality are read from every target.
"""

from __future__ import annotations

import math
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections import deque

from prometheus_client.parser import text_string_to_metric_families

COUNTERS = {
    "predictions": "sluice_predictions_total",
    "dlq": "sluice_dlq_total",
    "late": "sluice_late_total",
    "replayed": "sluice_replayed_total",
}
LATENCY = "sluice_event_to_prediction_seconds"
#: Series that say what a target is (stream.metrics.WORKER_INFO, stream.monitor.gauges.INFO).
WORKER_INFO, MONITOR_INFO = "sluice_worker_info", "sluice_monitor_info"
#: The label join's online-evaluation gauges (stream/worker/labels.py), per worker: each sees its own partitions.
ONLINE_PREFIX = "sluice_online_"
HISTORY = 300  # scrapes kept for the rate chart
MAX_GAUGES = 200


def parse(text: str) -> list[tuple[str, dict, float, str]]:
    """(sample name, labels, value, family type) for every sample of a text-format exposition."""
    return [
        (s.name, dict(s.labels), float(s.value), family.type)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets, +Inf last; None if empty."""
    buckets = sorted(buckets)
    if not buckets or not math.isinf(buckets[-1][0]) or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    index = next(i for i, (_, count) in enumerate(buckets) if count >= rank)
    if index == len(buckets) - 1:
        return buckets[-2][0] if len(buckets) > 1 else None
    upper, count = buckets[index]
    if index == 0 and upper <= 0:
        return upper
    lower, below = buckets[index - 1] if index else (0.0, 0.0)
    return lower + (upper - lower) * (rank - below) / (count - below)


def expand(url: str) -> list[str]:
    """`dns+http://name:port/path` -> one URL per address of name (sorted); any other URL as it is."""
    if not url.startswith("dns+"):
        return [url]
    parts = urllib.parse.urlsplit(url[len("dns+"):])
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_STREAM)
    except OSError:
        return []
    hosts = sorted({info[4][0] for info in infos})
    return [parts._replace(netloc=f"[{h}]:{parts.port}" if ":" in h else f"{h}:{parts.port}").geturl() for h in hosts]


def _shown_gauge(name: str, kind: str) -> bool:
    """Sluice's own gauges (monitor, deployment, online metrics), not creation times or process facts."""
    return kind == "gauge" and name.startswith("sluice_") and not name.endswith("_created") and name != "sluice_ready"


def target_kind(scrape: dict) -> str | None:
    """"worker", "monitor" or "other" for a target that answered; None for one that did not."""
    if not scrape.get("up"):
        return None
    names = {n for n, _, _, _ in scrape.get("samples") or ()}
    return "worker" if WORKER_INFO in names else "monitor" if MONITOR_INFO in names else "other"


def summarize(scrapes: dict[str, dict]) -> dict:
    """Fleet numbers from the latest scrape of every endpoint (a scrape may carry "kind", remembered from before)."""
    totals = {name: 0.0 for name in COUNTERS}
    totals["events_in"] = 0.0
    by_version: dict[str, float] = {}
    buckets: dict[float, float] = {}
    targets, gauges, gauges_total = [], [], 0
    online: dict[tuple, dict] = {}
    for url, scrape in sorted(scrapes.items()):
        samples = scrape.get("samples") or []
        kind = target_kind(scrape) or scrape.get("kind") or "unknown"
        ready = next((v for n, _, v, _ in samples if n == "sluice_ready"), None)
        targets.append({"url": url, "kind": kind, "up": scrape["up"], "error": scrape.get("error"), "ready": ready == 1})
        for name, labels, value, mtype in samples:
            online_gauge = name.startswith(ONLINE_PREFIX) and "version" in labels  # shown in their own table
            if _shown_gauge(name, mtype) and not online_gauge:
                gauges_total += 1
                if len(gauges) < MAX_GAUGES:
                    gauges.append({"url": url, "name": name, "labels": labels, "value": value})
        if kind != "worker":
            continue
        for name, labels, value, mtype in samples:
            for key, metric in COUNTERS.items():
                if name == metric:
                    totals[key] += value
            if name == "sluice_events_in_total" and labels.get("stage") == "0":
                totals["events_in"] += value
            if name == COUNTERS["predictions"]:
                version = labels.get("model_version", "")
                by_version[version] = by_version.get(version, 0.0) + value
            if name == f"{LATENCY}_bucket":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + value
            if name.startswith(ONLINE_PREFIX) and "version" in labels and mtype == "gauge" and len(online) < MAX_GAUGES:
                row = online.setdefault((url, labels.get("version", ""), labels.get("route", "")), {})
                row[name[len(ONLINE_PREFIX):]] = value
    latency = {name: histogram_quantile(q, list(buckets.items())) for name, q in (("p50", 0.5), ("p99", 0.99))}
    workers = [t for t in targets if t["kind"] == "worker"]
    return {
        "targets": targets,
        "workers": workers,
        "up": sum(w["up"] for w in workers),
        "ready": sum(w["ready"] for w in workers),
        "totals": totals,
        "by_version": by_version,
        "latency_s": {**latency, "count": buckets.get(math.inf, 0.0)},
        "gauges": gauges,
        "gauges_total": gauges_total,
        "online": [{"url": u, "version": v, "route": r, "metrics": m} for (u, v, r), m in sorted(online.items())],
    }


class Scraper(threading.Thread):
    """Scrapes every endpoint each `interval_s`; `snapshot()` is the fleet summary plus the rate history."""

    def __init__(self, urls: list[str], interval_s: float = 2.0, timeout_s: float = 2.0, listeners=()):
        super().__init__(name="sluice-ui-scrape", daemon=True)
        self.urls, self.interval_s, self.timeout_s = list(urls), interval_s, timeout_s
        #: Called with (time ms, {url: scrape}) after every scrape (the monitor's gauges over time).
        self.listeners = list(listeners)
        self._lock = threading.Lock()
        self._latest: dict[str, dict] = {}
        self._rates: deque = deque(maxlen=HISTORY)
        self._previous: dict[str, tuple[float, float]] = {}
        self._kinds: dict[str, str] = {}  # url -> what it was when it last answered
        self._halt = threading.Event()

    def scrape_once(self) -> None:
        latest, now = {}, time.time()
        for url in (u for pattern in self.urls for u in expand(pattern)):
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as reply:  # noqa: S310 - operator-given URLs
                    latest[url] = {"up": True, "samples": parse(reply.read().decode())}
            except (OSError, ValueError) as exc:
                latest[url] = {"up": False, "error": f"{type(exc).__name__}: {exc}"}
        for url, scrape in latest.items():
            kind = target_kind(scrape) or self._kinds.get(url)
            if kind is not None:
                self._kinds[url] = scrape["kind"] = kind
        rate, measured = 0.0, False
        for url, scrape in latest.items():
            if not scrape["up"] or scrape.get("kind") != "worker":
                continue
            total = sum(v for n, _, v, _ in scrape["samples"] if n == COUNTERS["predictions"])
            if url in self._previous:
                t0, n0 = self._previous[url]
                rate += (total - n0 if total >= n0 else total) / max(now - t0, 1e-6)
                measured = True
            self._previous[url] = (now, total)
        with self._lock:
            self._latest = latest
            if measured:
                self._rates.append((int(now * 1000), rate))
        for listener in self.listeners:
            listener(int(now * 1000), latest)

    def run(self) -> None:
        while not self._halt.is_set():
            self.scrape_once()
            self._halt.wait(self.interval_s)

    def snapshot(self) -> dict:
        with self._lock:
            summary = summarize(self._latest)
            summary["rate"] = {"t": [t for t, _ in self._rates], "predictions_per_s": [r for _, r in self._rates]}
            summary["urls"] = list(self.urls)
        return summary

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)
