"""The drift monitor's pure core: prediction-log records in, statistics and alert records out.

`Monitor.add_log` takes a micro-batch of `prediction_log` records (parsed
JSON) from one partition and updates, for every model version that scored
them (the serving one and each shadow, from "scores"), that version's
window. `Monitor.evaluate` judges every sub-window that has become complete:
event time has moved past it on every partition that is not idle (the
slowest partition holds the watermark). `Monitor.judge` turns the
statistics into alert and recovery records (stream.monitor.alerts).

A version is judged while it serves: `deployed` tells which versions each
deployment (seq) serves (champion and challengers), and the records say
which deployment scored them. Once records of a deployment that no longer
names a version arrive, that version is judged up to its last complete
window (the one ending with the last sub-window before the switch) and its
window is then dropped: a version that stopped serving is not judged on a
window that empties out.

A version whose model.json has no reference gets one computed from its
first `bootstrap_rows` events (logged once): its drift is then measured
against the start of monitoring, not against training.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from datetime import datetime

import numpy as np

from stream.monitor.alerts import AlertBook, Check
from stream.monitor.baseline import Baseline, compute_reference
from stream.monitor.quality import EntitySet, OutcomeRates
from stream.monitor.thresholds import Thresholds
from stream.monitor.window import VersionWindow

log = logging.getLogger("sluice.monitor")

#: What the monitor needs of a model version: (feature names in model order, its reference or None).
Describe = Callable[[str], tuple[list[str], dict | None]]


class Monitor:
    #: The window kept per model version (a subclass may judge windows differently).
    window_class = VersionWindow

    def __init__(
        self, thresholds: Thresholds, describe: Describe, *, batch_views: dict[str, list[str]] | None = None,
        entities: Callable[[str], dict[str, EntitySet]] | None = None, bootstrap_rows: int = 5000,
        max_versions: int = 8, idle_s: float = 30.0, seed: int = 0,
    ):
        self.thresholds, self.describe = thresholds, describe
        self.batch_views = batch_views or {}
        self.entities = entities or (lambda version: {})
        self.bootstrap_rows, self.max_versions, self.idle_s = bootstrap_rows, max_versions, idle_s
        self.windows: dict[str, VersionWindow] = {}
        self.unknown: dict[str, str] = {}  # version -> why it is not monitored
        self._bootstrap: dict[str, list] = {}
        self._last_seen: dict[str, int] = {}
        self.partitions: dict[int, list[float]] = {}  # partition -> [highest event time ms, wall time last seen]
        self.evaluated: int | None = None  # last sub-window judged
        w = thresholds.windows
        self.rates = OutcomeRates(int(w.rates_sub_window_s * 1000), w.rates_sub_windows, w.min_outcomes)
        self.book = AlertBook(w.hysteresis, w.clear_after)
        self.sample_rate = 0.0  # share of events sampled for attribution (the runner sizes it to a cost budget)
        self.evicted: list[str] = []  # versions whose windows were dropped (the runner removes their gauges)
        self._rng = np.random.default_rng(seed)
        self.events = 0
        self.deployments: dict[int, frozenset[str]] = {}  # seq -> the versions it serves
        self.deployment_seq: int | None = None  # newest deployment a record was scored under
        self.retired: dict[str, int] = {}  # version -> last sub-window it is judged on
        self._switch_ms: float | None = None
        self._closing: list[str] = []  # retired versions dropped since the last `judge`: their open alerts close

    def deployed(self, seq: int, versions) -> None:
        """The versions deployment `seq` serves (champion and challengers), from the deployments topic."""
        self.deployments[int(seq)] = frozenset(versions)
        self._retire()

    def _switched(self, records: list[dict], event_ms: np.ndarray) -> None:
        """Note the newest deployment the records were scored under, and when (event time) it was first seen."""
        newest, first_ms = self.deployment_seq, None
        for r, ms in zip(records, event_ms.tolist()):
            seq = r.get("deployment")
            if not isinstance(seq, int) or (newest is not None and seq < newest):
                continue
            if newest is None or seq > newest:
                newest, first_ms = seq, ms
            elif first_ms is not None:
                first_ms = min(first_ms, ms)
        if newest != self.deployment_seq:
            self.deployment_seq, self._switch_ms = newest, first_ms
            self._retire()

    def _retire(self) -> None:
        serving = self.deployments.get(self.deployment_seq) if self.deployment_seq is not None else None
        if serving is None:
            return  # which versions serve is not known (yet): every version seen is judged
        for version in serving:
            self.retired.pop(version, None)  # serving again
        last = int(self._switch_ms) // self.thresholds.windows.sub_window_ms - 1
        for version in [*self.windows, *self._bootstrap]:
            if version not in serving and version not in self.retired:
                self.retired[version] = last
                log.warning("model version %s no longer serves (deployment %d): judged up to its last complete "
                            "window, then dropped", version, self.deployment_seq)

    # -- input ---------------------------------------------------------------

    def process(self, records: list[dict], partitions: list[int], now_s: float) -> list[Check]:
        """A consumed batch (records of any partitions): added one sub-window at a time, each judged when complete.

        Sorting by event time and judging between sub-windows makes the
        result independent of how the consumer happened to batch the
        records: a batch spanning many sub-windows is judged at each of them,
        as a trickle of small batches would be.
        """
        checks: list[Check] = []
        if records:
            event_ms = event_times_ms([r["event_time"] for r in records])
            order = np.argsort(event_ms, kind="stable")
            bucket = event_ms[order] // self.thresholds.windows.sub_window_ms
            cuts = np.flatnonzero(np.diff(bucket)) + 1
            for piece in np.split(order, cuts):
                by_partition: dict[int, list[int]] = {}
                for i in piece.tolist():
                    by_partition.setdefault(partitions[i], []).append(i)
                for partition, rows in by_partition.items():
                    self.add_log([records[i] for i in rows], partition, now_s, event_ms[rows])
                checks += self._judge_windows(now_s)
        return checks

    def add_log(self, records: list[dict], partition: int, now_s: float, event_ms: np.ndarray | None = None) -> None:
        if not records:
            return
        if event_ms is None:
            event_ms = event_times_ms([r["event_time"] for r in records])
        self.events += len(records)
        mark = self.partitions.setdefault(partition, [float(event_ms.max()), now_s])
        mark[0], mark[1] = max(mark[0], float(event_ms.max())), now_s
        self._switched(records, event_ms)
        by_version: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            for version in r.get("scores") or {r["model_version"]: r["score"]}:
                by_version.setdefault(version, []).append(i)
        for version, rows in by_version.items():
            self._add_version(version, [records[i] for i in rows], event_ms[rows])

    def add_outcomes(self, outcome: str, reasons: list[str] | None, kafka_ms) -> None:
        """Dead letters ("dlq") or late events ("late") with their reasons, or predictions (reasons None)."""
        self.rates.add(outcome, reasons, np.asarray(kafka_ms, dtype=np.int64))

    def _add_version(self, version: str, records: list[dict], event_ms: np.ndarray) -> None:
        if version in self.retired:
            return  # scored by a partition that had not switched yet: its window is judged as it was
        window = self.windows.get(version) or self._open(version, records, event_ms)
        if window is None:
            return
        self._last_seen[version] = self.events
        names = window.names
        pick = operator.itemgetter(*names)
        matrix = np.array([pick(r["features"]) for r in records], dtype=np.float64).reshape(len(records), len(names))
        scores = np.array([_score(r, version) for r in records], dtype=np.float64)
        missing = None
        if records and "batch_missing" in records[0]:
            missing = {v: np.array([v in (r.get("batch_missing") or ()) for r in records]) for v in window.batch_views}
        keys = {k: [str(r["entity"].get(k)) for r in records] for k in window.entities}
        sample = None
        if self.sample_rate > 0 and window.baseline.contributions:
            sample = self._rng.random(len(records)) < self.sample_rate
        window.add(event_ms, matrix, scores, missing, keys, sample)

    def _open(self, version: str, records: list[dict], event_ms: np.ndarray) -> VersionWindow | None:
        if version in self.unknown:
            return None
        try:
            names, reference = self.describe(version)
        except Exception as exc:  # noqa: BLE001 - any model that cannot be described is left out, and said once
            self.unknown[version] = str(exc)
            log.warning("model version %s is not monitored: %s", version, exc)
            return None
        if reference is None:
            reference = self._bootstrapped(version, names, records, event_ms)
            if reference is None:
                return None
            source = "stream"
        else:
            source = "model"
        window = self.window_class(
            Baseline.from_reference(version, names, reference, source), self.thresholds, self.batch_views,
            self.entities(version),
        )
        self.windows[version] = window
        self._last_seen[version] = self.events
        self._evict()
        if source == "stream":
            held = self._bootstrap.pop(version)
            self._add_version(version, [r for batch, _ in held for r in batch], np.concatenate([t for _, t in held]))
            return None  # this batch was in `held`
        return window

    def _bootstrapped(self, version: str, names: list[str], records: list[dict], event_ms: np.ndarray) -> dict | None:
        held = self._bootstrap.setdefault(version, [])
        held.append((records, event_ms))
        rows = [r for batch, _ in held for r in batch]
        if len(rows) < self.bootstrap_rows:
            return None
        pick = operator.itemgetter(*names)
        matrix = np.array([pick(r["features"]) for r in rows], dtype=np.float64).reshape(len(rows), len(names))
        scores = np.array([_score(r, version) for r in rows], dtype=np.float64)
        log.warning(
            "model version %s has no reference in its model.json: drift is measured against its first %d events "
            "(retrain with a Sluice that writes references to compare with training instead)", version, len(rows),
        )
        return compute_reference(matrix, names, scores)

    def _evict(self) -> None:
        while len(self.windows) > self.max_versions:
            oldest = min(self.windows, key=lambda v: self._last_seen.get(v, -1))
            log.warning("model version %s not seen lately: its drift window is dropped", oldest)
            del self.windows[oldest]
            self.evicted.append(oldest)

    # -- judging -------------------------------------------------------------

    def expect(self, partitions, now_s: float) -> None:
        """Partitions assigned to the reader: until they deliver (or stay idle for idle_s), they hold the watermark."""
        for p in partitions:
            self.partitions.setdefault(p, [float("-inf"), now_s])

    def ahead(self, now_s: float, lead_ms: float) -> set[int]:
        """Partitions more than `lead_ms` of event time past the watermark: the reader should pause them."""
        watermark = self.watermark_ms(now_s)
        if watermark is None:
            return set()
        return {p for p, (mark, _) in self.partitions.items() if mark > watermark + lead_ms}

    @property
    def dropped(self) -> int:
        """Records whose sub-window had already left the rings (a partition too far behind the others)."""
        return sum(w.dropped for w in self.windows.values())

    def watermark_ms(self, now_s: float) -> float | None:
        live = [m for m, seen in self.partitions.values() if now_s - seen <= self.idle_s]
        return min(live) if live else None

    def evaluate(self, now_s: float, now_ms: int) -> list[Check]:
        """Statistics of every sub-window completed since the last call (event time), and of the rates (broker time)."""
        return self._judge_windows(now_s) + self._judge_rates(now_ms)

    def _judge_windows(self, now_s: float) -> list[Check]:
        checks: list[Check] = []
        watermark = self.watermark_ms(now_s)
        if watermark is None or watermark == float("-inf"):  # a partition has not delivered yet
            return checks
        w = self.thresholds.windows
        complete = int(watermark) // w.sub_window_ms - 1
        start = complete if self.evaluated is None else self.evaluated + 1
        # The rings hold two windows of sub-windows: older ones have left them.
        for last in range(max(start, complete - w.sub_windows + 1), complete + 1):
            for version, window in list(self.windows.items()):
                if last <= self.retired.get(version, last):
                    checks += window.evaluate(last)
            self.evaluated = last
        for version, until in self.retired.items():
            if until <= complete and (version in self.windows or version in self._bootstrap):
                self.windows.pop(version, None)
                self._bootstrap.pop(version, None)
                self.evicted.append(version)
                self._closing.append(version)
        return checks

    def _judge_rates(self, now_ms: int) -> list[Check]:
        due = self.rates.due(now_ms)
        return self.rates.evaluate(due) if due is not None else []

    def judge(self, checks: list[Check], emitted_at: str) -> list[dict]:
        records = []
        for check in checks:
            rule = self.thresholds.rule(check.feature, check.statistic)
            if rule is None:
                continue
            record = self.book.observe(check, rule, emitted_at)
            if record is not None:
                records.append(record)
        for version in self._closing:
            records += self.book.close_version(version, emitted_at, "the version no longer serves")
        self._closing = []
        return records

    def take_samples(self):
        """(version, buckets, rows) of every version with rows waiting for attribution."""
        for version, window in self.windows.items():
            taken = window.take_samples()
            if taken is not None:
                yield version, *taken

    def add_contributions(self, version: str, buckets: np.ndarray, contributions: np.ndarray) -> None:
        window = self.windows.get(version)
        if window is not None:
            window.add_contributions(buckets, contributions)

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.windows.values()) + self.rates.ring.nbytes


def _score(record: dict, version: str) -> float:
    scores = record.get("scores")
    return scores[version] if scores else record["score"]


def event_times_ms(texts: list[str]) -> np.ndarray:
    """Epoch ms of ISO-8601 UTC times ("…Z", as the prediction records write them)."""
    if all(t.endswith("Z") for t in texts):
        try:
            return np.array([t[:-1] for t in texts], dtype="datetime64[ms]").astype(np.int64)
        except ValueError:
            pass
    # An offset other than Z: the slow, general way.
    return np.array([round(datetime.fromisoformat(t).timestamp() * 1000) for t in texts], dtype=np.int64)
