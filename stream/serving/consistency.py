"""Synchronous answers held until the stream scores the same event, then compared.

`sluice serve` answers a request from the window state as it is, then
produces the event; the stream scores it a few milliseconds later. The two
are equal unless something changed in between: another event of the same
entity folded in first, a deployment switched, the partition moved to
another worker (which then scores it: this one never sees it). Each answer
ends as one outcome: `equal` (same vector and score), `differs`, or
`unseen` (not scored here within `wait_s`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

OUTCOMES = ("equal", "differs", "unseen")


class Held(NamedTuple):
    features: dict  # name -> value (None: missing)
    score: float | None
    version: str | None
    at: float  # when it was answered (monotonic seconds)


class Consistency:
    """Answers by event id, oldest first; bounded by `max_held` (the oldest beyond it end as unseen)."""

    def __init__(self, wait_s: float = 60.0, max_held: int = 100_000):
        self.wait_s, self.max_held = wait_s, max_held
        self.held: OrderedDict[str, Held] = OrderedDict()

    def hold(self, event_id: str, log: dict, now: float) -> list[str]:
        """Remember the answer `log` (a prediction log record) for `event_id`; returns the ids this ended unseen."""
        self.held[event_id] = Held(log["features"], log["score"], log["model_version"], now)
        self.held.move_to_end(event_id)
        ended = []
        while len(self.held) > self.max_held:
            ended.append(self.held.popitem(last=False)[0])
        return ended

    def forget(self, event_id: str) -> None:
        """An answer whose event never entered the stream (its delivery failed)."""
        self.held.pop(event_id, None)

    def seen(self, event_id: str, log: dict) -> str | None:
        """The stream's prediction log record for `event_id`: equal or differs, or None if no answer is held."""
        held = self.held.pop(event_id, None)
        if held is None:
            return None
        same = held.score == log["score"] and _same_vector(held.features, log["features"])
        return "equal" if same and held.version == log["model_version"] else "differs"

    def expire(self, now: float) -> list[str]:
        """The ids of answers the stream has not scored here within `wait_s`: each ends as unseen."""
        ended = []
        while self.held:
            event_id, held = next(iter(self.held.items()))
            if now - held.at < self.wait_s:
                break
            del self.held[event_id]
            ended.append(event_id)
        return ended


def _same_vector(a: dict, b: dict) -> bool:
    """Exactly equal, feature by feature (the same computation gives the same bits; NaN is written as None)."""
    if a.keys() != b.keys():
        return False
    for name, x in a.items():
        y = b[name]
        if x != y and not (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
            return False
    return True
