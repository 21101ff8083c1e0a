"""A consumer group's progress seen from outside, once a second: what `sluice chaos` waits on and measures.

Reads the group's committed offsets on every input topic (for the commit
lag and for "every fault waits until the group committed past the last
one") and the end offsets of the outputs (to tell a stalled run from a
finished one), without joining the group.
"""

from __future__ import annotations

import threading
import time

from features.errors import SluiceError
from stream.kafka.offsets import committed_offsets, end_offsets


class GroupWatch(threading.Thread):
    """Once per `interval_s`: the group's committed offsets on every input topic, with the wall-clock time
    (for the commit lag), and whether anything moved (committed offsets, output topics' end offsets)."""

    def __init__(self, bootstrap: str, group: str, inputs: list[str], outputs: list[str], interval_s: float = 1.0):
        super().__init__(name="group-watch", daemon=True)
        self.bootstrap, self.group, self.inputs, self.outputs = bootstrap, group, inputs, outputs
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict]] = []
        self.moved_at = time.monotonic()  # when a committed or an end offset last changed
        self.forwarded_ends: dict = {}  # (input index >= 1, partition) -> end offset of that repartition topic
        self._last: tuple = ()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            started = time.time()
            try:
                committed = {
                    (index, p): offset
                    for index, topic in enumerate(self.inputs)
                    for p, offset in committed_offsets(self.bootstrap, self.group, topic, timeout_s=5.0).items()
                }
                ends = [sorted(end_offsets(self.bootstrap, topic, timeout_s=5.0).items()) for topic in self.outputs]
                self.forwarded_ends = {
                    (index, p): end
                    for index, topic in enumerate(self.inputs[1:], start=1)
                    for p, end in end_offsets(self.bootstrap, topic, timeout_s=5.0).items()
                }
            except SluiceError:
                continue  # the broker is paused: no sample
            # Stamped midway: the offsets were read at some moment of the call.
            self.samples.append(((started + time.time()) / 2 * 1000, committed))
            state = (sorted(committed.items()), ends, sorted(self.forwarded_ends.items()))
            if state != self._last:
                self._last, self.moved_at = state, time.monotonic()

    def committed_events(self) -> dict[int, int]:
        """The latest sample's committed offsets on the events topic (input 0)."""
        return _events(self.samples[-1][1]) if self.samples else {}

    def all_committed(self, produced_ends: dict[int, int]) -> bool:
        """Whether the group committed every produced message and everything forwarded between its stages."""
        if not self.samples:
            return False
        committed = self.samples[-1][1]
        events_done = all((committed.get((0, p)) or 0) >= end for p, end in produced_ends.items())
        return events_done and all((committed.get(pos) or 0) >= end for pos, end in self.forwarded_ends.items())

    def committed_events_after(self, at_ms: float) -> dict[int, int] | None:
        """Committed offsets on the events topic in the first sample taken after `at_ms`; None before there is one."""
        for sampled_ms, committed in self.samples:
            if sampled_ms >= at_ms:
                return _events(committed)
        return None

    def advanced_past(self, mark: dict[int, int]) -> bool:
        """Whether the group committed past `mark` (a `committed_events()`) on every events partition."""
        now = self.committed_events()
        return all(now.get(p, 0) > offset for p, offset in mark.items())

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=15)


def _events(committed: dict) -> dict[int, int]:
    """A sample's committed offsets on the events topic (input 0), by partition."""
    return {p: offset or 0 for (index, p), offset in committed.items() if index == 0}
