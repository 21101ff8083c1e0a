"""A deliberately naive recomputation of Sluice's window semantics, event by event.

It shares no code with features/: plain Python over dicts, numpy only for the
final statistic. Tests compare both the online and the offline paths to it.
"""

from __future__ import annotations

import math

import numpy as np


def brute_late(rows: list[dict], lateness_ms: int, pcol: str, ocol: str) -> set[int]:
    late, seen_max = set(), {}
    for i in sorted(range(len(rows)), key=lambda i: (rows[i][pcol], rows[i][ocol])):
        r = rows[i]
        prev = seen_max.get(r[pcol])
        if prev is not None and r["ts"] < prev - lateness_ms:
            late.add(i)
        seen_max[r[pcol]] = r["ts"] if prev is None else max(prev, r["ts"])
    return late


def brute_value(function: str, values: list, distinct: list) -> float:
    if function == "count":
        return float(len(values))
    if function == "count_distinct":
        return float(len(set(distinct)))
    if function == "sum":
        return float(math.fsum(values))
    if not values:
        return math.nan
    arr = np.array(values, dtype=float)
    if function == "mean":
        return math.fsum(values) / len(values)
    if function == "min":
        return float(arr.min())
    if function == "max":
        return float(arr.max())
    if len(values) < 2:
        return math.nan
    var = float(np.var(arr, ddof=1))
    return math.sqrt(var) if function == "std" else var


def brute_features(plan, rows: list[dict], n_stages: int) -> tuple[dict[int, int], list[dict]]:
    """rows: dicts with 'ts' (ms), event fields, and '_partition_k'/'_offset_k'.

    Returns (late stage per late row, features per row).
    """
    late_at: dict[int, int] = {}
    for stage in range(1):
        alive = [i for i in range(len(rows)) if i not in late_at]
        sub = [rows[i] for i in alive]
        for j in brute_late(sub, plan.schema.allowed_lateness_ms, f"_partition_{stage}", f"_offset_{stage}"):
            late_at[alive[j]] = stage
    out: list[dict] = [{} for _ in rows]
    for view in plan.stream_views:
        stage = plan.stage_of(view)
        key = lambda r: tuple(str(r[k]) for k in view.join_keys)  # noqa: E731
        by_entity: dict[tuple, list[int]] = {}
        for i in range(len(rows)):
            if i not in late_at:
                by_entity.setdefault(key(rows[i]), []).append(i)
        for i in range(len(rows)):
            if i in late_at:
                continue
            e = rows[i]
            members = by_entity[key(e)]
            for agg in view.aggs:
                if agg.slide_ms < agg.window_ms:
                    hi = (e["ts"] // agg.slide_ms) * agg.slide_ms
                else:
                    hi = e["ts"]
                lo = hi - agg.window_ms
                inside = [
                    rows[j]
                    for j in members
                    if rows[j][f"_offset_{stage}"] < e[f"_offset_{stage}"]
                    and lo <= rows[j]["ts"] < hi
                ]
                vals = [float(r[agg.column]) for r in inside] if agg.function not in ("count", "count_distinct") else [0.0] * len(inside)
                dist = [str(r[agg.column]) for r in inside]
                out[i][f"{view.name}__{agg.name}"] = brute_value(agg.function, vals, dist)
    return late_at, out
