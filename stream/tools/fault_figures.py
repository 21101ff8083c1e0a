"""What each fault of a chaos run cost, computed from what was read back from the topics.

Pure functions over timestamps and offsets (no Kafka): the chaos tool reads
the output topics and samples the group's committed offsets, and these turn
them into figures.

* **Stall after a fault**: for every source partition of the events topic,
  the longest time without an outcome (a prediction, a late record or a dead
  letter of one of its messages) between the fault and the next one
  (or the end of the stream: a gap after the last event was produced is the
  drain, not a stall). A gap still open when the next fault lands is that
  fault's from then on: a partition predicts every few tens of milliseconds,
  so the gap a fault opens nearly always "starts" with a prediction just
  before it, and charging it whole to the fault before made that one's
  figure the next fault's stall plus its distance (a 3 s broker pause
  followed 7.7 s later by a kill read 24.8 s, the kill 24.7 s). The fault's
  stall is the longest over partitions. The longest gap of any partition in
  the whole run, whatever caused it, is `longest_gap_s`. Late records and
  dead letters count as outcomes: a partition whose events are late (a
  producer's clock ahead moved its stream time) is answered, not stalled;
  counted as predictions only, such a stretch once read as a 13-32 s
  "stall" of a partition whose worker was keeping up (docs/operations.md,
  "Rebalances").
* **Commit lag**: at each sample of the committed offsets, for every input
  partition (the events topic and each repartition topic), the end of what
  has been processed (one past the highest offset with an outcome produced
  by then) minus the committed offset.
* **Replayed per kill**: what the group read again after a SIGKILL (processed
  but not committed at the kill, by the last commit sample before it), and
  the extra prediction-log records of one input message written after it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field

#: Fault kinds as the report names them.
KINDS = ("kill", "join", "leave", "broker_pause")

Position = tuple[int, int]  # (input topic index: 0 events, s stage s's repartition topic; partition)


@dataclass
class Fault:
    kind: str  # one of KINDS
    at_ms: int  # wall clock (epoch ms) when it was applied
    sent: int = 0  # messages produced before it
    flowing_s: float = 0.0  # how long events kept arriving after it (the events topic's last timestamp - at_ms)
    stall_s: float = 0.0
    reread: int = 0  # kills only: processed but uncommitted at the kill
    duplicates: int = 0  # kills only: extra log records of one message written after it
    gap: tuple[int, int, int] | None = None  # the stall's gap: (source partition, its last prediction before, next one) in ms

    def line(self) -> dict:
        out = {
            "kind": self.kind, "at_ms": self.at_ms, "sent": self.sent, "flowing_s": round(self.flowing_s, 1),
            "stall_s": round(self.stall_s, 1),
        }
        if self.gap is not None:
            p, a, b = self.gap
            out["gap"] = {"partition": p, "from_s": round((a - self.at_ms) / 1000, 1), "to_s": round((b - self.at_ms) / 1000, 1)}
        if self.kind == "kill":
            out.update(reread=self.reread, duplicates=self.duplicates)
        return out


@dataclass
class Timeline:
    """Outcomes read back from the topics, each with its broker timestamp (ms)."""

    predictions: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # source partition -> times
    # Source partition -> times of its messages' other outcomes (late records, dead letters).
    settled: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    processed: dict[Position, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))  # (time, offset)
    repeats: list[int] = field(default_factory=list)  # times of log records repeating an already scored message
    last_event_ms: int = 0  # the events topic's last broker timestamp

    def processed_ends(self) -> dict[Position, tuple[list[int], list[int]]]:
        """Per input partition: sorted outcome times and, at each, one past the highest offset processed so far."""
        ends = {}
        for pos, items in self.processed.items():
            items.sort()
            times, running, high = [], [], -1
            for ts, offset in items:
                high = max(high, offset)
                times.append(ts)
                running.append(high + 1)
            ends[pos] = (times, running)
        return ends


def outcome_times(timeline: Timeline) -> dict[int, list[int]]:
    """Per source partition, the sorted times of every outcome of its messages: predictions, late records, dead letters."""
    return {
        p: sorted([*timeline.predictions.get(p, ()), *timeline.settled.get(p, ())])
        for p in set(timeline.predictions) | set(timeline.settled)
    }


def _end_at(ends: tuple[list[int], list[int]], at_ms: float) -> int:
    times, running = ends
    i = bisect_right(times, at_ms)
    return running[i - 1] if i else 0


def stalls(faults: list[Fault], timeline: Timeline, flowing_until_ms: int) -> None:
    """Set each fault's `stall_s` (see the module docstring) and `flowing_s`."""
    ordered = sorted(faults, key=lambda f: f.at_ms)
    outcomes = outcome_times(timeline)
    for i, fault in enumerate(ordered):
        fault.flowing_s = (timeline.last_event_ms - fault.at_ms) / 1000
        window_end = ordered[i + 1].at_ms if i + 1 < len(ordered) else flowing_until_ms
        worst, fault.gap = 0.0, None
        for partition, times in outcomes.items():
            # Gaps between consecutive predictions, and from the last one to the stream's end.
            k = max(bisect_right(times, fault.at_ms) - 1, 0)
            for a, b in zip(times[k:], [*times[k + 1 :], flowing_until_ms]):
                if a >= window_end or a >= flowing_until_ms:
                    break
                if b <= fault.at_ms:
                    continue
                length = (min(b, window_end, flowing_until_ms) - max(a, fault.at_ms)) / 1000
                if length > worst:
                    worst, fault.gap = length, (partition, a, b)
        fault.stall_s = worst


def longest_gap_s(timeline: Timeline, flowing_until_ms: int) -> float:
    """The longest time one source partition went without an outcome while events were due (faults aside)."""
    worst = 0
    for times in outcome_times(timeline).values():
        ordered = sorted(t for t in times if t < flowing_until_ms)
        worst = max([worst, *(b - a for a, b in zip(ordered, [*ordered[1:], flowing_until_ms]))])
    return worst / 1000


def stall_by_kind(faults: list[Fault]) -> dict[str, float]:
    """The longest stall after each kind of fault that happened."""
    out: dict[str, float] = {}
    for fault in faults:
        out[fault.kind] = round(max(out.get(fault.kind, 0.0), fault.stall_s), 1)
    return out


def commit_lags(samples: list[tuple[float, dict[Position, int | None]]], timeline: Timeline) -> list[int]:
    """At each sample, the largest (processed end - committed offset) over input partitions."""
    ends = timeline.processed_ends()
    lags = []
    for at_ms, committed in samples:
        worst = 0
        for pos, end in ends.items():
            if pos in committed:
                worst = max(worst, _end_at(end, at_ms) - (committed[pos] or 0))
        lags.append(worst)
    return lags


def replays(faults: list[Fault], samples: list[tuple[float, dict[Position, int | None]]], timeline: Timeline) -> None:
    """Set each kill's `reread` and `duplicates` (see the module docstring)."""
    ends = timeline.processed_ends()
    ordered = sorted(faults, key=lambda f: f.at_ms)
    repeats = sorted(timeline.repeats)
    for i, fault in enumerate(ordered):
        if fault.kind != "kill":
            continue
        before = [committed for at_ms, committed in samples if at_ms <= fault.at_ms]
        if before:
            last = before[-1]
            fault.reread = sum(
                max(0, _end_at(end, fault.at_ms) - (last.get(pos) or 0)) for pos, end in ends.items() if pos in last
            )
        window_end = ordered[i + 1].at_ms if i + 1 < len(ordered) else float("inf")
        fault.duplicates = bisect_right(repeats, window_end) - bisect_right(repeats, fault.at_ms)
