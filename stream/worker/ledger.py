"""Which fetched offsets of each input partition are done: the offset that is safe to commit.

The chunking consumer (stream/worker/consumer.py) hands each fetch of a
partition to the agent as one chunk. A chunk can be lost between the fetch
and the agent: a rebalance empties the stream buffers, Faust's fetch loop
abandons a message when the flow stops, and a fetch that lands while the
flow is stopped is thrown away. The consumer's position has moved past all
of them; only a seek to the committed offset reads them again. So the
committed offset must never pass a chunk that was fetched and not done,
however many later chunks are done (committing "the highest acked offset +
1" did pass one: a kill then lost its events for good).

The ledger records, per partition, the offset span of every chunk in fetch
order. A span runs from the end of the previous fetch of the same partition
(so offsets the log skips, such as transaction markers, belong to the next
chunk) to the chunk's last offset. `progress` is the end of the run of done
spans at the head; a span that is never done (lost, or thrown away) holds it
there. A seek changes what the next fetch returns, so it starts the ledger
of that partition afresh: spans fetched before it are forgotten, and acks of
their chunks change nothing.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable


class Span:
    """Offsets [start, end) of one fetched chunk; `done` once the chunk is committed-safe (acked)."""

    __slots__ = ("start", "end", "done")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end, self.done = start, end, False

    def __repr__(self) -> str:
        return f"Span({self.start}, {self.end}, done={self.done})"


class Ledger:
    """Spans of fetched chunks per partition, since that partition's last seek."""

    def __init__(self) -> None:
        self._spans: dict[Hashable, collections.deque[Span]] = {}
        self._fetched_to: dict[Hashable, int] = {}

    def fetched(self, tp: Hashable, first: int, last: int) -> Span:
        """Record a fetch of offsets `first`..`last` of `tp`; mark the returned span done when it is acked."""
        start = self._fetched_to.get(tp, first)
        span = Span(min(start, first), last + 1)
        self._spans.setdefault(tp, collections.deque()).append(span)
        self._fetched_to[tp] = last + 1
        return span

    def reset(self, tp: Hashable | None = None) -> None:
        """A seek: forget what was fetched before it (of `tp`, or of every partition)."""
        if tp is None:
            self._spans.clear()
            self._fetched_to.clear()
        else:
            self._spans.pop(tp, None)
            self._fetched_to.pop(tp, None)

    def progress(self, tp: Hashable, committed: int | None) -> int | None:
        """The offset after the head run of done spans (None if no new span is done); forgets that run.

        Spans wholly below `committed` are dropped too: what they hold is
        committed already.
        """
        spans = self._spans.get(tp)
        end = None
        while spans and (spans[0].done or (committed is not None and spans[0].end <= committed)):
            span = spans.popleft()
            if span.done:
                end = span.end
        return end

    def waiting(self, tp: Hashable) -> int:
        """Spans of `tp` fetched and not yet committable."""
        return len(self._spans.get(tp, ()))
