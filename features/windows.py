"""The windowed-aggregation kernel shared by the worker and the offline path.

Both paths describe window contents as *items*: a raw event, or (online only)
a tile that pre-aggregates the events of one slide. Given items and queries,
`aggregate` returns, for every query, the aggregate over the items that

* belong to the query's group (view entity),
* fall in the query's window (see `window_bounds`), and
* arrived before the query (`item.seq < query.seq`).

The offline path feeds a whole history; the worker feeds its state plus one
micro-batch. Same code, same semantics: that is what makes parity exact.
Everything here is numpy over arrays; nothing loops per event.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from features.spec import WindowAgg

#: Code meaning "no value" in a distinct-value column.
NO_CODE = np.iinfo(np.int64).min
#: Aggregations that divide by a window's count (NaN for an empty window).
_DIVIDING = frozenset({"mean", "var", "std"})


@dataclass
class Items:
    """Window contents, one row per raw event or tile.

    `sums`/`m2s`/`mins`/`maxs` are keyed by numeric column; `codes` by the
    columns used in count_distinct (64-bit stable hashes of the values).
    `m2` is the sum of squared deviations from the item's own mean (0 for a
    raw event), so items merge exactly with Chan's formula.
    """

    group: np.ndarray
    ts: np.ndarray
    seq: np.ndarray
    cnt: np.ndarray
    sums: dict[str, np.ndarray]
    m2s: dict[str, np.ndarray]
    mins: dict[str, np.ndarray]
    maxs: dict[str, np.ndarray]
    codes: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_events(
        cls,
        group: np.ndarray,
        ts: np.ndarray,
        seq: np.ndarray,
        values: dict[str, np.ndarray],
        codes: dict[str, np.ndarray],
    ) -> Items:
        n = len(ts)
        return cls(
            group=np.asarray(group, dtype=np.int64),
            ts=np.asarray(ts, dtype=np.int64),
            seq=np.asarray(seq, dtype=np.int64),
            cnt=np.ones(n),
            sums={c: np.asarray(v, dtype=np.float64) for c, v in values.items()},
            m2s={c: np.zeros(n) for c in values},
            mins={c: np.asarray(v, dtype=np.float64) for c, v in values.items()},
            maxs={c: np.asarray(v, dtype=np.float64) for c, v in values.items()},
            codes={c: np.asarray(v, dtype=np.int64) for c, v in codes.items()},
        )

    def take(self, idx: np.ndarray) -> Items:
        return Items(
            group=self.group[idx],
            ts=self.ts[idx],
            seq=self.seq[idx],
            cnt=self.cnt[idx],
            sums={c: a[idx] for c, a in self.sums.items()},
            m2s={c: a[idx] for c, a in self.m2s.items()},
            mins={c: a[idx] for c, a in self.mins.items()},
            maxs={c: a[idx] for c, a in self.maxs.items()},
            codes={c: a[idx] for c, a in self.codes.items()},
        )

    @staticmethod
    def concat(parts: list[Items]) -> Items:
        first = parts[0]

        def cat(get) -> dict[str, np.ndarray]:
            return {c: np.concatenate([get(p)[c] for p in parts]) for c in get(first)}

        return Items(
            group=np.concatenate([p.group for p in parts]),
            ts=np.concatenate([p.ts for p in parts]),
            seq=np.concatenate([p.seq for p in parts]),
            cnt=np.concatenate([p.cnt for p in parts]),
            sums=cat(lambda p: p.sums),
            m2s=cat(lambda p: p.m2s),
            mins=cat(lambda p: p.mins),
            maxs=cat(lambda p: p.maxs),
            codes=cat(lambda p: p.codes),
        )

    def sorted(self) -> Items:
        """Order by (group, ts, seq): the order every sum is accumulated in."""
        return self.take(np.lexsort((self.seq, self.ts, self.group)))


def window_bounds(agg: WindowAgg, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-open window [lo, hi) in event time for queries at `ts` (ms).

    Exact sliding: [ts - window, ts); the event itself and events at the very
    same millisecond are outside. Hopping: the complete slides before the one
    holding ts, [k*slide - window, k*slide) with k = ts // slide.
    """
    if agg.hopping:
        hi = (ts // agg.slide_ms) * agg.slide_ms
    else:
        hi = ts
    return hi - agg.window_ms, hi


@dataclass(frozen=True)
class Queries:
    """Points to evaluate features at: a group, an event time, an arrival position."""

    group: np.ndarray
    ts: np.ndarray
    seq: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)


def _query_order(queries: Queries) -> np.ndarray:
    """Queries ordered by (group, ts).

    Window bounds are non-decreasing in ts for every window kind, so this one
    order sorts the bound keys of every window: computed once per call
    instead of once per window.
    """
    if not len(queries):
        return np.zeros(0, dtype=np.int64)
    t0 = int(queries.ts.min())
    span = int(queries.ts.max()) - t0 + 1
    if (int(queries.group.max()) + 1) * span < 2**62:
        return np.argsort(queries.group * span + (queries.ts - t0), kind="stable")
    return np.lexsort((queries.ts, queries.group))


class _Keys(NamedTuple):
    """Items keyed by (group, time) as one int64, for the windows of one call (see `_item_keys`)."""

    item_key: np.ndarray
    base: int
    span: int
    times: np.ndarray | None  # the ranked times, where times are too far apart to key directly


def _item_keys(items: Items, queries: Queries, bounds: list[tuple[np.ndarray, np.ndarray]]) -> _Keys:
    """One key per item, comparable with every window's bounds in `bounds` ((lo, hi) per window).

    Any base and span that hold every time compare alike, so the windows of
    a call share one.
    """
    base = min(int(items.ts.min()), *(int(lo.min()) for lo, _ in bounds))
    span = max(int(items.ts.max()), *(int(hi.max()) for _, hi in bounds)) - base + 1
    n_groups = int(max(items.group.max(), queries.group.max())) + 1
    if n_groups * span >= 2**62:
        # Times millennia apart among many entities (valid event times span
        # the years 1-9999): replace each time by its rank among all times,
        # which keeps every comparison and makes the span small.
        times = np.unique(np.concatenate([items.ts, *(t for b in bounds for t in b)]))
        return _Keys(items.group * len(times) + np.searchsorted(times, items.ts), base, len(times), times)
    return _Keys(items.group * span + (items.ts - base), base, span, None)


def _item_ranges(
    items: Items, queries: Queries, lo: np.ndarray, hi: np.ndarray, order: np.ndarray | None = None,
    keys: _Keys | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the slice [a, b) of the items (sorted by (group, ts)) in its group with lo <= ts < hi.

    `order` (from `_query_order`) only makes the searches faster; `keys`
    (from `_item_keys`, with these bounds among its) saves keying the items again.
    """
    if keys is None:
        keys = _item_keys(items, queries, [(lo, hi)])
    item_key, span = keys.item_key, keys.span
    if keys.times is None:
        lo_t, hi_t = lo - keys.base, hi - keys.base
    else:
        lo_t, hi_t = np.searchsorted(keys.times, lo), np.searchsorted(keys.times, hi)
    # Searching in sorted order lets each search start where the last one ended.
    lo_key = queries.group * span + lo_t
    if order is None:
        order = np.argsort(lo_key, kind="stable")
    a = np.empty(len(queries), dtype=np.int64)
    b = np.empty(len(queries), dtype=np.int64)
    a[order] = item_key.searchsorted(lo_key[order], side="left")
    hi_key = queries.group * span + hi_t
    b[order] = item_key.searchsorted(hi_key[order], side="left")
    return a, b


def _pairs(
    items: Items, queries: Queries, lo: np.ndarray, hi: np.ndarray, order: np.ndarray | None = None,
    keys: _Keys | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(query index, item index) for every item inside each query's window.

    Items must be sorted by (group, ts). Pairs come out query-major, items in
    time order within a query, so sums accumulate in a fixed order. `order`
    (from `_query_order`) only makes the searches faster.
    """
    n_q = len(queries)
    if n_q == 0 or len(items) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    a, b = _item_ranges(items, queries, lo, hi, order, keys)
    lengths = b - a
    total = int(lengths.sum())
    # Array methods rather than numpy's functions of the same name: the same work without a Python
    # wrapper around each call, which on a small call's arrays costs about as much as the work.
    q_idx = np.arange(n_q, dtype=np.int64).repeat(lengths)
    starts = lengths.cumsum() - lengths
    i_idx = np.arange(total, dtype=np.int64) - (starts - a).repeat(lengths)
    keep = items.seq[i_idx] < queries.seq[q_idx]
    return q_idx[keep], i_idx[keep]


def _segment_reduce(ufunc: np.ufunc, values: np.ndarray, q_idx: np.ndarray, n_q: int, empty: float,
                    shared: dict | None = None) -> np.ndarray:
    """`ufunc` over each query's pairs; `shared` keeps the segments for the window's other aggregations."""
    out = np.empty(n_q)
    out.fill(empty)
    if len(q_idx) == 0:
        return out
    segments = shared.get("segments") if shared is not None else None
    if segments is None:
        counts = np.bincount(q_idx, minlength=n_q)
        nonempty = counts.nonzero()[0]
        segments = nonempty, (counts.cumsum() - counts)[nonempty]
        if shared is not None:
            shared["segments"] = segments
    nonempty, starts = segments
    out[nonempty] = ufunc.reduceat(values, starts)
    return out


def aggregate(aggs: tuple[WindowAgg, ...], items: Items, queries: Queries) -> dict[str, np.ndarray]:
    """Evaluate `aggs` for every query. Items must be `Items.sorted()`.

    Empty windows give 0 for sum/count/count_distinct and NaN otherwise;
    std/var are sample statistics (n - 1) and NaN below two events.
    """
    n_q = len(queries)
    out: dict[str, np.ndarray] = {}
    by_window: dict[tuple[int, int], list[WindowAgg]] = {}
    for agg in aggs:
        by_window.setdefault((agg.window_ms, agg.slide_ms), []).append(agg)
    order = _query_order(queries) if len(by_window) > 1 else None
    bounds = [window_bounds(group_aggs[0], queries.ts) for group_aggs in by_window.values()]
    keys = _item_keys(items, queries, bounds) if n_q and len(items) else None
    # Windows of one layout end alike (exact: at the query; hopping: at its slide's start), so a narrower
    # one's pairs are its widest's with the item's time at or after the narrower start, in the same order.
    widest: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
    for (window_ms, _), group_aggs, (lo, hi) in zip(by_window, by_window.values(), bounds):
        layout = group_aggs[0].layout
        if layout not in widest or window_ms > widest[layout][0]:
            widest[layout] = (window_ms, lo, hi)
    pairs = {layout: _pairs(items, queries, lo, hi, order, keys) for layout, (_, lo, hi) in widest.items()}
    for (window_ms, _), group_aggs, (lo, hi) in zip(by_window, by_window.values(), bounds):
        layout = group_aggs[0].layout
        q_idx, i_idx = pairs[layout]
        if window_ms != widest[layout][0]:
            inside = items.ts[i_idx] >= lo[q_idx]
            q_idx, i_idx = q_idx[inside], i_idx[inside]
        count = np.bincount(q_idx, weights=items.cnt[i_idx], minlength=n_q)
        shared: dict = {}  # what several aggregations of one window compute alike: sums, means, segments
        # Empty windows divide by zero (NaN, on purpose) in means, variances and deviations: numpy's warnings
        # about it are silenced once per window that has one, not once per aggregation.
        divides = any(agg.function in _DIVIDING for agg in group_aggs)
        with np.errstate(invalid="ignore", divide="ignore") if divides else contextlib.nullcontext():
            for agg in group_aggs:
                out[agg.name] = _one(agg, items, q_idx, i_idx, n_q, count, shared)
    return out


def _one(agg, items, q_idx, i_idx, n_q, count, shared) -> np.ndarray:
    fn, col = agg.function, agg.column
    if fn == "count":
        return count.copy()
    if fn == "count_distinct":
        codes = items.codes[col][i_idx]
        present = codes != NO_CODE
        q, c = q_idx[present], codes[present]
        order = np.lexsort((c, q))
        q, c = q[order], c[order]
        first = np.ones(len(q), dtype=bool)
        first[1:] = (q[1:] != q[:-1]) | (c[1:] != c[:-1])
        return np.bincount(q[first], minlength=n_q).astype(np.float64)
    if fn in ("min", "max"):
        source = items.mins[col] if fn == "min" else items.maxs[col]
        ufunc = np.minimum if fn == "min" else np.maximum
        neutral = np.inf if fn == "min" else -np.inf
        value = _segment_reduce(ufunc, source[i_idx], q_idx, n_q, neutral, shared)
        return np.where(count > 0, value, np.nan)
    if ("sum", col) not in shared:
        shared["sum", col] = np.bincount(q_idx, weights=items.sums[col][i_idx], minlength=n_q)
    total = shared["sum", col]
    if fn == "sum":
        return total.copy()
    # Divisions by zero (empty windows) give NaN here, which `np.where` then replaces: the caller
    # (`aggregate`) silences numpy's warnings about them, once for all of a window's aggregations.
    if ("mean", col) not in shared:
        shared["mean", col] = np.where(count > 0, total / count, np.nan)
    mean = shared["mean", col]
    if fn == "mean":
        return mean.copy()
    # Two-pass, Chan-merged deviations: stable even for near-constant windows.
    cnt = items.cnt[i_idx]
    item_mean = np.where(cnt > 0, items.sums[col][i_idx] / np.where(cnt > 0, cnt, 1), 0.0)
    dev = item_mean - mean[q_idx]
    m2 = np.bincount(q_idx, weights=items.m2s[col][i_idx] + cnt * dev * dev, minlength=n_q)
    var = np.where(count > 1, m2 / (count - 1), np.nan)
    if fn == "var":
        return var
    if fn == "std":
        return np.sqrt(var)
    msg = f"unknown aggregation function {fn!r}"
    raise ValueError(msg)


#: Window pairs (a query and an item in its window) one block of `aggregate_in_blocks` holds, about:
#: each costs some 100 bytes of working memory while a block is aggregated.
BLOCK_PAIRS = 1_000_000


def aggregate_in_blocks(aggs: tuple[WindowAgg, ...], items: Items, queries: Queries, max_pairs: int = BLOCK_PAIRS) -> dict[str, np.ndarray]:
    """`aggregate`, a block of queries at a time, each block holding about `max_pairs` window pairs at most.

    Offline, one call holds an entity's whole history, and `aggregate`
    materializes every pair of an event and an item in its windows: a busy
    entity's pairs grow with the length of the history, not with its rate.
    Blocks of consecutive queries in (group, time) order read one contiguous
    slice of the sorted items, and every query meets the same items in the
    same order as in one call, so the values are bit-identical.
    """
    order, cuts, a, b = block_plan(aggs, items, queries, max_pairs)
    if len(cuts) <= 2:
        return aggregate(aggs, items, queries)
    out = {agg.name: np.empty(len(queries)) for agg in aggs}
    for start, stop in zip(cuts[:-1], cuts[1:]):
        rows = order[start:stop]
        part = items.take(slice(int(a[rows[0]]), int(b[rows[-1]])))
        values = aggregate(aggs, part, Queries(queries.group[rows], queries.ts[rows], queries.seq[rows]))
        for name, column in values.items():
            out[name][rows] = column
    return out


def block_plan(aggs, items: Items, queries: Queries, max_pairs: int) -> tuple[np.ndarray, list[int], np.ndarray, np.ndarray]:
    """(query order, block boundaries in that order, each query's item slice [a, b) over all its windows).

    A block's pairs are at most `max_pairs` plus those of its last query:
    a query's pairs are never split.
    """
    order = _query_order(queries)
    if not len(queries) or not len(items):
        return order, [0, len(queries)], np.zeros(len(queries), np.int64), np.zeros(len(queries), np.int64)
    bounds = [window_bounds(agg, queries.ts) for agg in aggs]
    lo = np.minimum.reduce([lo for lo, _ in bounds])
    hi = np.maximum.reduce([hi for _, hi in bounds])
    a, b = _item_ranges(items, queries, lo, hi, order)
    # Every window of a query lies inside [lo, hi): its pairs, summed over the windows, are at most this.
    per_query = (b - a)[order] * len({(agg.window_ms, agg.slide_ms) for agg in aggs})
    before = np.cumsum(per_query) - per_query
    block = before // max(int(max_pairs), 1)
    cuts = [0, *(np.flatnonzero(block[1:] != block[:-1]) + 1).tolist(), len(queries)]
    return order, cuts, a, b
