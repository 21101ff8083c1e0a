"""The arrival clock online: what makes a later stage see events in an order read from the events log.

The first stage reads one events partition in offset order; a stage after a
repartition hop reads records that several upstream partitions forwarded,
interleaved as those workers happened to run. Folded in that interleaving,
a merchant's window would depend on processing speed. Instead every
forwarded record carries its place in the arrival order of
features/arrival.py, the key (clock, first-stage partition, offset), and a
later stage folds the records of each of its partitions in key order:

* the first stage keeps each partition's clock (the running max of broker
  timestamps, over every record, valid or not) in its state, and after each
  batch sends every partition of the next topic a **mark**: "partition p has
  forwarded everything up to key K" (its last record's key);
* a later stage's partition holds what it reads in an `ArrivalMerge` and
  releases a record once every upstream partition has passed its key (a
  record or a mark beyond it), so that nothing with a smaller key can still
  come; it then passes marks on the same way to the stage after it;
* an idle events partition would hold everything (its clock stands still):
  a later stage that waits on it appends a **tick** to it, an empty record
  whose broker timestamp moves the partition's clock on, in the log, where
  every run and the offline path see it (stream.worker.ticks);
* an upstream partition that says nothing (its worker down, no ticks) would
  hold everything: after `wait_ms` of wall time a held record is released
  anyway. That is the one departure from the log's order; it is counted
  (`released_early`), and a record that then arrives behind what was
  released is folded where it arrives and counted (`out_of_order`).
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import orjson

from features.history import CLOCK_KEY, NEVER, append_history, history_before
from stream.pipeline.outcomes import NO_PLACE, Message, Output

#: Kafka key of a mark on a repartition topic (validated entity keys hold no control characters).
MARK_KEY = b"\x00mark"
#: Kafka key of a tick: an empty record a worker appends to an idle events partition, so that its
#: clock moves on in the log itself (stream.worker.ticks). Not an event: it has no outcome.
TICK_KEY = b"\x00tick"

Key = tuple[int, int, int]  # (clock, first-stage partition, offset there)


def first_stage_clock(table: Mapping[str, bytes], partition: int, messages: list[Message]) -> tuple[np.ndarray, dict]:
    """Each message's arrival clock, and the state write that carries the partition's clock on.

    The clock before the batch comes from the partition's clock history
    (kept per batch start, like stream time), so a replay from any committed
    offset gives every record the clock the first run gave it.
    """
    if not messages:
        return np.zeros(0, dtype=np.int64), {}
    key = CLOCK_KEY.format(partition=partition)
    before = history_before(table, key, messages[0].offset)
    stamps = np.array([m.timestamp_ms for m in messages], dtype=np.int64)
    clocks = np.maximum.accumulate(np.maximum(stamps, max(before, 0)))
    writes: dict[str, bytes] = {}
    append_history(table, key, messages[-1].offset + 1, int(clocks[-1]), writes)
    return clocks, writes


def marks(topic: str, partitions: int, source: int, passed: Key) -> list[Output]:
    """One mark for every partition of `topic`: `source` has forwarded everything up to key `passed`."""
    value = orjson.dumps([source, *passed])
    return [Output(topic, MARK_KEY, value, None, p) for p in range(partitions)]


class Held(NamedTuple):
    key: Key
    order: int  # arrival in this merge: breaks ties between a record and its own duplicate
    message: Message
    token: object  # what the record came in (a fetch): acked once all its records are released


class Released(NamedTuple):
    messages: list[Message]  # in arrival order; unreadable records first (they have no key)
    done: list  # tokens whose every record is now released
    duplicates: int  # records forwarded twice (a first stage replayed them): dropped
    early: int  # records released before every upstream partition passed them
    out_of_order: int  # records that came behind what was already released


class ArrivalMerge:
    """One later-stage partition's records, released in arrival order (see the module docstring).

    `seen`: per first-stage partition, the highest offset this partition has
    folded in (from its state): a record at or below it was forwarded twice
    and was already folded.
    """

    def __init__(self, stage: int, n_sources: int, wait_ms: float, seen: dict[int, int]):
        self.stage, self.n_sources, self.wait_ms = stage, n_sources, wait_ms
        self.received = dict(seen)  # first-stage partition -> highest offset received
        self.released = dict(seen)  # first-stage partition -> highest offset released (or folded before)
        self.frontier: dict[int, Key] = {}  # upstream partition -> the key it has passed
        self.heap: list[Held] = []
        self.arrivals: collections.deque[tuple[float, Key]] = collections.deque()  # (when, key) in arrival order
        self.last: Key | None = None  # the largest key released
        self.outstanding: dict[int, int] = {}  # id(token) -> records of it still held
        self.tokens: dict[int, object] = {}
        self.order = itertools.count()
        self.ready: list[Message] = []  # unreadable records, released with the next call
        self.done: list = []
        self.duplicates = 0
        self.out_of_order = 0

    def __len__(self) -> int:
        return len(self.heap)

    def add(self, token, messages: list[Message], now_ms: float) -> None:
        held = 0
        for m in messages:
            if m.key == MARK_KEY:
                if not self._mark(m.value):
                    self.ready.append(dataclasses.replace(m, seq=NO_PLACE))  # not a mark: dead-lettered
                continue
            read = _key_of(m.value, self.stage)
            if read is None:
                self.ready.append(dataclasses.replace(m, seq=NO_PLACE))  # the decoder dead-letters it
                continue
            key, source = read
            if key[2] <= self.received.get(key[1], -1):
                self.duplicates += 1
                continue
            self.received[key[1]] = key[2]
            self._passed(source, key)
            if self.last is not None and key < self.last:
                self.out_of_order += 1
                self.ready.append(m)
                self.released[key[1]] = key[2]
                continue
            heapq.heappush(self.heap, Held(key, next(self.order), m, token))
            self.arrivals.append((now_ms, key))
            held += 1
        if held:
            self.outstanding[id(token)] = self.outstanding.get(id(token), 0) + held
            self.tokens[id(token)] = token
        elif id(token) not in self.outstanding:
            self.done.append(token)

    def release(self, now_ms: float) -> Released:
        """What can go now, in arrival order."""
        limit = self._passed_by_all()
        early_limit = limit
        while self.arrivals and self.arrivals[0][0] <= now_ms - self.wait_ms:
            _, key = self.arrivals.popleft()
            if early_limit is None or key > early_limit:
                early_limit = key
        out, early = self.ready, 0
        self.ready = []
        while self.heap and early_limit is not None and self.heap[0].key <= early_limit:
            held = heapq.heappop(self.heap)
            if limit is None or held.key > limit:
                early += 1
            out.append(held.message)
            self.last = held.key
            self.released[held.key[1]] = held.key[2]
            left = self.outstanding[id(held.token)] - 1
            if left:
                self.outstanding[id(held.token)] = left
            else:
                del self.outstanding[id(held.token)]
                self.done.append(self.tokens.pop(id(held.token)))
        self._prune()
        done, self.done = self.done, []
        duplicates, out_of_order = self.duplicates, self.out_of_order
        self.duplicates = self.out_of_order = 0
        return Released(out, done, duplicates, early, out_of_order)

    def let_go(self) -> list:
        """Forget every held record; returns the tokens that held them (none of them is done).

        Their records will come again (the caller does not ack the tokens), so
        what was received goes back to what was released: within one
        first-stage partition records come and go in offset order, so that
        is exact. What upstream partitions have passed stays known.
        """
        tokens = list(self.tokens.values())
        self.heap.clear()
        self.arrivals.clear()
        self.outstanding.clear()
        self.tokens.clear()
        self.received = dict(self.released)
        return tokens

    def passed(self) -> Key | None:
        """The key this partition has passed: nothing it releases from now on comes before it."""
        limit = self._passed_by_all()
        if self.last is not None and (limit is None or self.last > limit):
            return self.last
        return limit

    def lagging(self) -> list[int]:
        """The upstream partitions that have not passed the oldest held record (what it waits on)."""
        if not self.heap:
            return []
        head = self.heap[0].key
        return [q for q in range(self.n_sources) if q not in self.frontier or self.frontier[q] < head]

    def oldest_held_ms(self) -> float | None:
        """When the record held longest came in (None: nothing held)."""
        self._prune()
        return self.arrivals[0][0] if self.heap else None

    def next_deadline_ms(self) -> float | None:
        """When the oldest held record is due, wall time in ms (None: nothing held)."""
        self._prune()
        return self.arrivals[0][0] + self.wait_ms if self.heap else None

    def _prune(self) -> None:
        """Forget the arrival times of released records (every held key is above every released one)."""
        if not self.heap:
            self.arrivals.clear()
            return
        while self.arrivals[0][1] < self.heap[0].key:
            self.arrivals.popleft()

    def _passed_by_all(self) -> Key | None:
        if len(self.frontier) < self.n_sources:
            return None
        return min(self.frontier.values())

    def _passed(self, source: int, key: Key) -> None:
        known = self.frontier.get(source)
        if known is None or key > known:
            self.frontier[source] = key

    def _mark(self, value: bytes | None) -> bool:
        """Read a mark; False if it is not one."""
        try:
            source, clock, partition, offset = orjson.loads(value)
            key = (int(clock), int(partition), int(offset))
            source = int(source)
        except (ValueError, TypeError):
            return False
        self._passed(source, key)
        return True


def _key_of(value: bytes | None, stage: int) -> tuple[Key, int] | None:
    """(arrival key, upstream partition) of a forwarded record, or None if it is not one."""
    try:
        row = orjson.loads(value)
        arrival = row[2]
        first, previous = arrival[0], arrival[stage - 1]
        key = (int(row[-2]), int(first[0]), int(first[1]))
        return key, int(previous[0])
    except (ValueError, TypeError, IndexError, KeyError):
        return None


__all__ = ["MARK_KEY", "TICK_KEY", "NEVER", "ArrivalMerge", "Released", "first_stage_clock", "marks"]
