"""Data quality: entities training never saw, and the rates of dead letters and late events.

The per-feature shares (missing, defaulted batch features, outside the
training range) are counters in the same ring as the histograms (see
stream.monitor.window); this module holds what has its own state.

`EntitySet` is the set of entity keys a model's training rows had, as
sorted 64-bit hashes (8 bytes a key, whatever the number of events): a
lookup hashes the key and binary-searches. Two keys collide with
probability about n / 2^64, i.e. never in practice.

`OutcomeRates` counts every outcome of the worker (a prediction, a dead
letter by reason kind, a late event) in sub-windows of broker time (the
records' Kafka timestamps), so that "1% of events dead-lettered in the last
10 minutes" is a ratio of two counts in one ring.
"""

from __future__ import annotations

import hashlib

import numpy as np

from stream.monitor.alerts import Check
from stream.monitor.histograms import Ring
from stream.pipeline.events import REASON_KINDS

#: Labels a dead letter's reason can take: the worker's kinds, and one for records that carry none.
DLQ_REASONS = (*REASON_KINDS, "unknown")
#: The one reason an event is late.
LATE_REASONS = ("beyond_lateness",)


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class EntitySet:
    """Entity keys seen in training, as sorted uint64 hashes."""

    #: Lookups remembered (a dict in front of the binary search); cleared when full.
    CACHE_ENTRIES = 200_000

    def __init__(self, hashes: np.ndarray):
        self.hashes = np.unique(np.asarray(hashes, dtype=np.uint64))
        self._cache: dict[str, bool] = {}

    @classmethod
    def from_keys(cls, keys) -> EntitySet:
        return cls(np.fromiter((key_hash(str(k)) for k in dict.fromkeys(keys)), dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.hashes)

    def seen(self, keys: list[str]) -> np.ndarray:
        cache = self._cache
        new = [k for k in dict.fromkeys(keys) if k not in cache]
        if new:
            if len(cache) + len(new) > self.CACHE_ENTRIES:
                cache.clear()
            h = np.fromiter((key_hash(k) for k in new), dtype=np.uint64, count=len(new))
            pos = np.minimum(np.searchsorted(self.hashes, h), max(len(self.hashes) - 1, 0))
            found = (self.hashes[pos] == h) if len(self.hashes) else np.zeros(len(new), dtype=bool)
            cache.update(zip(new, found.tolist()))
        return np.fromiter((cache[k] for k in keys), dtype=bool, count=len(keys))


class OutcomeRates:
    """Predictions, dead letters by reason and late events per sub-window of broker time."""

    def __init__(self, sub_window_ms: int, sub_windows: int, min_outcomes: int):
        self.sub_window_ms, self.min_outcomes = sub_window_ms, min_outcomes
        names = ["prediction"] + [f"dlq:{r}" for r in DLQ_REASONS] + [f"late:{r}" for r in LATE_REASONS]
        self.slot = {name: i for i, name in enumerate(names)}
        self.ring = Ring(len(names), sub_windows)
        self.evaluated: int | None = None

    def add(self, outcome: str, reasons: list[str] | None, kafka_ms: np.ndarray) -> None:
        """Outcomes ("prediction", "dlq", "late"), their reasons (None for predictions), broker times."""
        kafka_ms = np.asarray(kafka_ms, dtype=np.int64)
        if outcome == "prediction":
            slots = np.full(len(kafka_ms), self.slot["prediction"])
        else:
            known = DLQ_REASONS if outcome == "dlq" else LATE_REASONS
            fallback = "unknown" if outcome == "dlq" else LATE_REASONS[0]
            slots = np.array([self.slot[f"{outcome}:{r if r in known else fallback}"] for r in reasons], dtype=np.int64)
        self.ring.add(kafka_ms // self.sub_window_ms, slots[:, None])

    def due(self, now_ms: int) -> int | None:
        """The last complete sub-window at broker time `now_ms`, if it was not judged yet."""
        last = now_ms // self.sub_window_ms - 1
        if self.ring.newest is None or (self.evaluated is not None and last <= self.evaluated):
            return None
        return last

    def evaluate(self, last: int) -> list[Check]:
        """dlq_rate and late_rate by reason (and "all") over the window ending with sub-window `last`."""
        self.evaluated = last
        totals = self.ring.total(last)
        outcomes = int(totals.sum())
        if outcomes < self.min_outcomes:
            return []
        length = self.ring.length
        window = {
            "start": _iso((last - length + 1) * self.sub_window_ms), "end": _iso((last + 1) * self.sub_window_ms),
            "events": outcomes, "sub_windows": length, "time": "broker",
        }
        checks = []
        for outcome, statistic, reasons in (("dlq", "dlq_rate", DLQ_REASONS), ("late", "late_rate", LATE_REASONS)):
            counts = {r: int(totals[self.slot[f"{outcome}:{r}"]]) for r in reasons}
            for reason, count in [("all", sum(counts.values())), *counts.items()]:
                checks.append(Check(None, reason, statistic, count / outcomes, None, window, window["start"], window["end"]))
        return checks


def _iso(ms: int) -> str:
    return np.datetime_as_string(np.datetime64(int(ms), "ms"), unit="ms") + "Z"
