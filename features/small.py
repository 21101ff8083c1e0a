"""The window kernel in plain Python, for micro-batches of a few events.

`features.windows.aggregate` costs dozens of numpy calls per view whatever
the batch holds; on a few events and their entities' stored rows, that fixed
cost is most of the work. This computes the same values with Python floats,
in the same order of operations, so the results are the same bits:

* items are ordered by (group, time, arrival), stored rows before the
  batch's events on ties (the kernel's stable sort);
* a query's window holds its group's items with lo <= time < hi that
  arrived before it, visited in that order;
* counts, sums and squared deviations are accumulated one item at a time
  from 0.0, as `np.bincount` does; means, variances and square roots are
  the same IEEE operations as numpy's.

Min and max are left to numpy where a value is NaN or zero: numpy's
reduction may return either zero when both signs meet, and this code
cannot promise which (`exact_extremes`).

Items are kept per group as columns (Python lists), so a stored row costs
no Python work until a window holds it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

import numpy as np

from features.spec import WindowAgg
from features.windows import NO_CODE

NAN = math.nan


@dataclass
class GroupItems:
    """One group's items as columns, ordered by (time, arrival); per column position for the stat lists."""

    ts: list[int]
    seq: list[int]
    cnt: list[float]
    sums: list[list[float]]
    m2s: list[list[float]]
    mins: list[list[float]]
    maxs: list[list[float]]
    codes: list[list[int]]


def layout_items(
    lay,
    rows: np.ndarray,
    row_group: np.ndarray,
    n_groups: int,
    batch_group: list[int],
    batch_ts: list[int],
    batch_seq: list[int],
    batch_values: list[list[float]],
    batch_codes: list[list[int]],
) -> list[GroupItems]:
    """A layout's stored rows (as `features.state.block_items` reads them) and a batch's events
    (as `Items.from_events`), per group, in the kernel's order."""
    k = len(lay.numeric)
    n = len(rows)
    if n:
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        bits = rows.view(np.int64)
        ts, cols = bits[:, 0].tolist(), rows.T.tolist()
        ends = np.cumsum(np.bincount(row_group, minlength=n_groups)).tolist()
    else:
        ts, cols, ends = [], [[] for _ in range(lay.width)], [0] * n_groups
    if lay.tile_ms:
        cnt_all = cols[1]
        stat_all = [cols[2 + i] for i in range(4 * k)]
        code_all: list[list[int]] = []
    else:
        cnt_all = None
        stat_all = [cols[1 + i] for i in range(k)]
        code_all = bits[:, 1 + k :].T.tolist() if n else [[] for _ in lay.distinct]
    out = []
    start = 0
    for end in ends:
        g_ts = ts[start:end]
        m = end - start
        if lay.tile_ms:
            stats = [col[start:end] for col in stat_all]
            g = GroupItems(g_ts, [-1] * m, cnt_all[start:end], stats[:k], stats[k : 2 * k], stats[2 * k : 3 * k],
                           stats[3 * k :], [])
        else:
            values = [col[start:end] for col in stat_all]
            # A raw event's sum, min and max are its value: one list, three roles, until an event is added.
            g = GroupItems(g_ts, [-1] * m, [1.0] * m, values, [[0.0] * m for _ in range(k)], values, values,
                           [col[start:end] for col in code_all])
        out.append(g)
        start = end
    _add_events(out, k, batch_group, batch_ts, batch_seq, batch_values, batch_codes)
    return out


def _add_events(out: list[GroupItems], k: int, group, ts, seq, values, codes) -> None:
    touched = {}
    for j, g in enumerate(group):
        items = touched.get(g)
        if items is None:
            items = touched[g] = out[g]
            if items.sums is items.mins:  # raw rows: the three roles part now
                items.mins = [list(col) for col in items.sums]
                items.maxs = [list(col) for col in items.sums]
        items.ts.append(ts[j])
        items.seq.append(seq[j])
        items.cnt.append(1.0)
        for i in range(k):
            v = values[i][j]
            items.sums[i].append(v)
            items.m2s[i].append(0.0)
            items.mins[i].append(v)
            items.maxs[i].append(v)
        for i, col in enumerate(codes):
            items.codes[i].append(col[j])
    for items in touched.values():
        keys = list(zip(items.ts, items.seq))
        if keys != sorted(keys):
            _reorder(items, sorted(range(len(keys)), key=keys.__getitem__))  # stable: stored rows first on ties


def _reorder(items: GroupItems, order: list[int]) -> None:
    items.ts = [items.ts[i] for i in order]
    items.seq = [items.seq[i] for i in order]
    items.cnt = [items.cnt[i] for i in order]
    for name in ("sums", "m2s", "mins", "maxs", "codes"):
        setattr(items, name, [[col[i] for i in order] for col in getattr(items, name)])


def exact_extremes(aggs: tuple[WindowAgg, ...], numeric: tuple[str, ...], groups: list[GroupItems]) -> bool:
    """Whether min and max here come out as numpy's would: no NaN and no zero among their values."""
    cols = {numeric.index(a.column) for a in aggs if a.function in ("min", "max")}
    for items in groups:
        for i in cols:
            for column in (items.mins[i], items.maxs[i]):
                for v in column:
                    if v == 0.0 or v != v:
                        return False
    return True


def aggregate_small(
    aggs: tuple[WindowAgg, ...],
    numeric: tuple[str, ...],
    distinct: tuple[str, ...],
    groups: list[GroupItems],
    queries: list[tuple[int, int, int]],
) -> dict[str, list[float]]:
    """`features.windows.aggregate` for queries (group, time, arrival) over `groups` (from `layout_items`)."""
    out: dict[str, list[float]] = {}
    by_window: dict[tuple[int, int], list[WindowAgg]] = {}
    for agg in aggs:
        by_window.setdefault((agg.window_ms, agg.slide_ms), []).append(agg)
    for (window_ms, slide_ms), group_aggs in by_window.items():
        plan = [(a.function, _column(a, numeric, distinct)) for a in group_aggs]
        columns = _window(plan, window_ms, slide_ms, groups, queries)
        out.update((a.name, column) for a, column in zip(group_aggs, columns))
    return out


def _window(plan: list[tuple[str, int]], window_ms: int, slide_ms: int, groups, queries) -> list[list[float]]:
    """One window's aggregations (function, column position) for every query."""
    hopping = slide_ms < window_ms
    summed = sorted({col for fn, col in plan if fn in ("sum", "mean", "var", "std")})
    columns: list[list[float]] = [[] for _ in plan]
    for g, t, s in queries:
        hi = (t // slide_ms) * slide_ms if hopping else t
        lo = hi - window_ms
        items = groups[g]
        seq = items.seq
        inside = [j for j in range(bisect_left(items.ts, lo), bisect_left(items.ts, hi)) if seq[j] < s]
        count = 0.0
        cnt = items.cnt
        for j in inside:
            count += cnt[j]
        totals = {}
        for col in summed:
            total = 0.0
            values = items.sums[col]
            for j in inside:
                total += values[j]
            totals[col] = total
        for (fn, col), column in zip(plan, columns):
            if fn == "count":
                column.append(count)
            elif fn == "sum":
                column.append(totals[col])
            elif fn == "mean":
                column.append(totals[col] / count if count > 0 else NAN)
            else:
                column.append(_other(fn, col, items, inside, count, totals))
    return columns


def _column(agg: WindowAgg, numeric: tuple[str, ...], distinct: tuple[str, ...]) -> int:
    if agg.function == "count":
        return -1
    if agg.function == "count_distinct":
        return distinct.index(agg.column)
    return numeric.index(agg.column)


def _other(fn: str, col: int, items: GroupItems, inside: list[int], count: float, totals: dict) -> float:
    if fn == "count_distinct":
        codes = items.codes[col]
        return float(len({codes[j] for j in inside if codes[j] != NO_CODE}))
    if fn == "min" or fn == "max":
        if not inside:
            return NAN
        values = items.mins[col] if fn == "min" else items.maxs[col]
        best = values[inside[0]]
        for j in inside:
            v = values[j]
            if (v < best) if fn == "min" else (v > best):
                best = v
        return best
    if fn not in ("var", "std"):
        msg = f"unknown aggregation function {fn!r}"
        raise ValueError(msg)
    mean = totals[col] / count if count > 0 else NAN
    m2 = 0.0
    cnts, sums, m2s = items.cnt, items.sums[col], items.m2s[col]
    for j in inside:
        c = cnts[j]
        dev = (sums[j] / c if c > 0 else 0.0) - mean
        m2 += m2s[j] + c * dev * dev
    var = m2 / (count - 1) if count > 1 else NAN
    if fn == "std":
        return math.sqrt(var) if var == var else NAN
    return var
