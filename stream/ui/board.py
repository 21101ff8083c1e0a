"""What the status page shows about predictions and outcomes, folded from topic records (pure: no Kafka).

Times are the records' broker timestamps (epoch ms): they cost nothing to
read and order records the way the broker received them. Memory is bounded
by the time window and the number of versions, routes, features and reasons,
never by the number of records: throughput is a count per second, latencies a
sample per 10-second bucket (every value until a bucket holds
`SAMPLES_PER_BUCKET`, a uniform reservoir after that), both for the last
`window_s` only. Totals count every record read since the page started
(beginning `lookback` before it). Online metrics per version count the
label join's rows (`labeled`) the way `stream.lifecycle.labeled.rows` defines
them: an event's row is its latest record carrying the prediction (joined,
correction or unlabeled), and it counts when it has a label, wherever the
label came from (a label record, the window's default, a correction of that
default). That is for the whole group: each worker's own gauges see only its
partitions.
"""

from __future__ import annotations

import random
import threading
from array import array
from collections import Counter, OrderedDict, defaultdict

import numpy as np

#: Percentiles the page shows, as (name, q in [0, 100]).
PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))
LATENCY_BUCKET_S = 10
SAMPLES_PER_BUCKET = 5000
#: Distinct dead-letter reasons kept apart; the rest count as "other".
MAX_REASONS = 50
#: Events whose labeled row is remembered (to replace it, or to count a re-sent record once).
RECENT_LABELED = 100_000
#: Which record is an event's row at equal revision (as stream.lifecycle.labeled.rows orders them).
_ROW_RANK = {"unlabeled": 0, "joined": 1, "correction": 2}


def reason_group(reason: str) -> str:
    """A dead-letter reason without its particulars: the text before the first ':' (at most 60 characters)."""
    head = reason.split(":", 1)[0].strip()
    return head[:60] or "unknown"


def percentiles(values) -> dict[str, float | None]:
    """The page's percentiles of `values` (numpy's linear interpolation); None for no values."""
    data = np.asarray(values, dtype=np.float64)
    if not len(data):
        return {name: None for name, _ in PERCENTILES}
    return {name: float(np.percentile(data, q)) for name, q in PERCENTILES}


class LatencyBuckets:
    """Latency samples per time bucket over a sliding window; a bucket keeps at most `cap` of them."""

    def __init__(self, bucket_s: int, window_s: int, cap: int, seed: int = 0):
        self.bucket_ms, self.window_ms, self.cap = bucket_s * 1000, window_s * 1000, cap
        self._samples: dict[int, array] = {}
        self._seen: Counter = Counter()
        self._rng = random.Random(seed)

    def add(self, t_ms: int, value: float) -> None:
        bucket = t_ms // self.bucket_ms
        samples = self._samples.get(bucket)
        if samples is None:
            samples = self._samples[bucket] = array("d")
        self._seen[bucket] += 1
        if len(samples) < self.cap:
            samples.append(value)
            return
        # Reservoir sampling: every value of the bucket is equally likely to be kept.
        slot = self._rng.randrange(self._seen[bucket])
        if slot < self.cap:
            samples[slot] = value

    def prune(self, now_ms: int) -> None:
        oldest = (now_ms - self.window_ms) // self.bucket_ms
        for bucket in [b for b in self._samples if b < oldest]:
            del self._samples[bucket], self._seen[bucket]

    def series(self) -> dict[str, list]:
        buckets = sorted(self._samples)
        out: dict[str, list] = {"t": [b * self.bucket_ms for b in buckets]}
        for name, _ in PERCENTILES:
            out[name] = []
        for bucket in buckets:
            for name, value in percentiles(self._samples[bucket]).items():
                out[name].append(value)
        return out

    def overall(self) -> dict:
        values = [v for samples in self._samples.values() for v in samples]
        return {**percentiles(values), "samples": len(values)}


class PerSecond:
    """Records per second of broker time, for the last `window_s`."""

    def __init__(self, window_s: int):
        self.window_s = window_s
        self._counts: Counter = Counter()

    def add(self, t_ms: int) -> None:
        self._counts[t_ms // 1000] += 1

    def prune(self, now_ms: int) -> None:
        oldest = now_ms // 1000 - self.window_s
        for second in [s for s in self._counts if s < oldest]:
            del self._counts[second]

    def series(self, now_ms: int) -> dict[str, list]:
        """Every second from the first one seen (in the window) to now, zeros included."""
        if not self._counts:
            return {"t": [], "n": []}
        first, last = min(self._counts), max(max(self._counts), now_ms // 1000)
        seconds = range(first, last + 1)
        return {"t": [s * 1000 for s in seconds], "n": [self._counts.get(s, 0) for s in seconds]}


class Board:
    """Predictions, latencies, data quality, dead letters, late events and labeled outcomes."""

    def __init__(self, window_s: int = 600):
        self.window_s = window_s
        self._lock = threading.Lock()
        self.throughput = PerSecond(window_s)
        self.latency = LatencyBuckets(LATENCY_BUCKET_S, window_s, SAMPLES_PER_BUCKET)
        self.predictions = 0
        self.decisions = 0
        self.by_version: Counter = Counter()
        self.by_route: Counter = Counter()
        self.fallbacks: Counter = Counter()
        self.rules = 0
        self.batch_missing = 0
        self.feature_nulls: Counter = Counter()
        self.feature_rows: Counter = Counter()
        self.dlq: Counter = Counter()
        self.late: Counter = Counter()
        self.labeled: dict[str, Counter] = defaultdict(Counter)
        self._recent: OrderedDict = OrderedDict()
        self.unreadable: Counter = Counter()

    def add_log(self, record: dict, t_ms: int) -> None:
        """One `prediction_log` record (older records lack route, fallback, rule and batch_missing)."""
        with self._lock:
            self.predictions += 1
            self.decisions += bool(record.get("decision"))
            self.by_version[str(record.get("model_version"))] += 1
            self.by_route[record.get("route") or "champion"] += 1
            if record.get("fallback"):
                self.fallbacks[str(record["fallback"])] += 1
            self.rules += record.get("rule") is not None
            self.batch_missing += bool(record.get("batch_missing"))
            for name, value in (record.get("features") or {}).items():
                self.feature_rows[name] += 1
                self.feature_nulls[name] += value is None
            self.throughput.add(t_ms)
            total_ms = (record.get("latency_ms") or {}).get("total")
            if isinstance(total_ms, int | float):
                self.latency.add(t_ms, float(total_ms))

    def add_dead_letter(self, reason: str, kind: str | None = None) -> None:
        """A dead letter, counted by its kind header (the labels of sluice_dlq_total), else by its reason's text."""
        with self._lock:
            group = kind or reason_group(reason)
            if group not in self.dlq and len(self.dlq) >= MAX_REASONS:
                group = "other"
            self.dlq[group] += 1

    def add_late(self, source: str) -> None:
        """A late copy; `source` is its 'topic/partition/offset' header: counted per stage topic."""
        with self._lock:
            self.late[source.rsplit("/", 2)[0] if source.count("/") >= 2 else (source or "unknown")] += 1

    def add_labeled(self, record: dict, key: bytes | None = None) -> None:
        """One `labeled` record (stream.lifecycle.labeled): the event's row, counted for its serving version.

        A record that carries the prediction replaces what the event counted
        before (a correction takes its previous label back only if the page
        counted it); a re-sent or older record changes nothing. Counts are
        sums of whole rows, so precision, recall and the label rate stay
        within [0, 1]. Memory is bounded by `RECENT_LABELED` events (least
        recently changed first out): a correction of an event forgotten by
        then counts its row a second time.
        """
        kind = record.get("kind")
        if kind not in _ROW_RANK or "model_version" not in record:
            return  # duplicate, unmatched_label: no prediction, no row
        rank = (int(record.get("revision") or 0), _ROW_RANK[kind])
        # The topic is keyed by event id; an unkeyed record is told apart by its prediction's times.
        ident = key if key is not None else (record.get("event_time"), record.get("scored_at"))
        score, threshold = record.get("score"), record.get("threshold")
        flagged = score is not None and threshold is not None and score >= threshold
        label = record.get("label")
        row = (rank, str(record["model_version"]), None if label is None else float(label) >= 0.5, flagged)
        with self._lock:
            held = self._recent.get(ident)
            if held is not None and held[0] >= rank:
                return
            if held is not None:
                self._count_row(held, -1)
                self._recent.move_to_end(ident)
            self._recent[ident] = row
            self._count_row(row, 1)
            if len(self._recent) > RECENT_LABELED:
                self._recent.popitem(last=False)

    def _count_row(self, row: tuple, sign: int) -> None:
        _, version, positive, flagged = row
        if positive is not None:
            _count(self.labeled[version], positive, flagged, sign)

    def unreadable_record(self, topic: str) -> None:
        with self._lock:
            self.unreadable[topic] += 1

    def snapshot(self, now_ms: int) -> dict:
        with self._lock:
            self.throughput.prune(now_ms)
            self.latency.prune(now_ms)
            rows = self.predictions
            return {
                "predictions": {
                    "total": rows,
                    "decisions": self.decisions,
                    "by_version": dict(self.by_version),
                    "by_route": dict(self.by_route),
                    "throughput": self.throughput.series(now_ms),
                    "latency_ms": self.latency.overall(),
                    "latency_series": self.latency.series(),
                },
                "quality": {
                    "rows": rows,
                    "fallback_share": _share(sum(self.fallbacks.values()), rows),
                    "fallbacks": dict(self.fallbacks),
                    "rule_share": _share(self.rules, rows),
                    "batch_missing_share": _share(self.batch_missing, rows),
                    "null_share": {n: _share(self.feature_nulls[n], c) for n, c in self.feature_rows.items()},
                },
                "outcomes": {
                    "dlq": dict(self.dlq), "dlq_total": sum(self.dlq.values()),
                    "late": dict(self.late), "late_total": sum(self.late.values()),
                },
                "online": {version: _online(c) for version, c in sorted(self.labeled.items())},
                "unreadable": dict(self.unreadable),
            }


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _count(counts: Counter, positive: bool, flagged: bool, sign: int) -> None:
    counts["rows"] += sign
    counts["positives"] += sign * positive
    counts["tp"] += sign * (positive and flagged)
    counts["fp"] += sign * (flagged and not positive)
    counts["fn"] += sign * (positive and not flagged)


def _online(c: Counter) -> dict:
    flagged = c["tp"] + c["fp"]
    return {
        "rows": c["rows"], "positives": c["positives"],
        "precision": _share(c["tp"], flagged), "recall": _share(c["tp"], c["positives"]),
        "label_rate": _share(c["positives"], c["rows"]),
    }
