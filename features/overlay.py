"""Read-your-own-writes: a mapping seen through writes that have not reached it yet.

State computed by a step is read back by the next step long before it is
stored: within one chunk (the label join), between the batches of one call
(the stream features, folded one after another), and between chunks whose
commit has not finished (the worker's table state). `Overlay` is that view
for all of them, with one lifecycle:

* `stage` (or `put`) writes, each tagged with the owner that made it (a chunk
  number; owners increase, so a later owner's write to a key replaces an
  earlier one's). Reads see them before the base.
* `committed(keys, upto)`: the base now holds these keys as owners up to
  `upto` left them; their staged writes stop shadowing it, except those a
  later owner made since (they are still on their way).
* `discard(owners)`: those owners will never commit (their input is read
  again elsewhere); their writes go, and the keys read the base again.

A staged None deletes its key: it reads as absent whatever the base holds
(the changelog's tombstone). The base is written by its owner, not by the
overlay: storing state is the caller's business (it must first make the
outputs computed from that state durable).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TypeVar

V = TypeVar("V")

_ABSENT = object()


class Overlay(Mapping[str, V]):
    """`base` read through staged writes: key -> (value or None for a deletion, owner)."""

    __slots__ = ("base", "pending", "_base_get")

    def __init__(self, base: Mapping[str, V]):
        self.base = base
        self.pending: dict[str, tuple[V | None, int]] = {}
        self._base_get = base.get  # read per entity per batch: one attribute lookup fewer

    # -- reading --------------------------------------------------------------

    def get(self, key: str, default=None):
        hit = self.pending.get(key)
        if hit is None:
            return self._base_get(key, default)
        value = hit[0]
        return default if value is None else value

    def __getitem__(self, key: str) -> V:
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __contains__(self, key) -> bool:
        return self.get(key, _ABSENT) is not _ABSENT

    def __iter__(self) -> Iterator[str]:
        """Every key that reads as present (needs an iterable base; a worker's store is not one)."""
        pending = self.pending
        for key in self.base:
            if key not in pending:
                yield key
        for key, (value, _) in pending.items():
            if value is not None:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # -- the lifecycle --------------------------------------------------------

    def stage(self, writes: Mapping[str, V | None], owner: int = 0) -> None:
        pending = self.pending
        for key, value in writes.items():
            pending[key] = (value, owner)

    def put(self, key: str, value: V | None, owner: int = 0) -> None:
        self.pending[key] = (value, owner)

    def staged(self) -> dict[str, V | None]:
        """The latest staged write of every key (None: deleted), in the order keys were first staged."""
        return {key: value for key, (value, _) in self.pending.items()}

    def committed(self, keys: Iterable[str], upto: int) -> None:
        """The base holds `keys` as owners up to `upto` wrote them: stop shadowing it there."""
        pending = self.pending
        for key in keys:
            hit = pending.get(key)
            if hit is not None and hit[1] <= upto:
                del pending[key]

    def discard(self, owners: Collection[int], keys: Iterable[str] | None = None) -> None:
        """Drop every staged write of `owners` (among `keys`, where the caller knows them: cheaper).

        A write of an earlier owner that one of these replaced is not
        restored: discard the latest owners of a key, never only older ones.
        """
        pending = self.pending
        for key in list(pending) if keys is None else keys:
            hit = pending.get(key)
            if hit is not None and hit[1] in owners:
                del pending[key]
