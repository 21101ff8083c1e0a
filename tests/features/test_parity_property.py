"""Online (micro-batched state) == offline (whole history) == brute force, on random streams.

Hypothesis draws windows, slides, timestamps, late arrivals, partitions and
batch sizes; every aggregation function is checked at every event.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.columns import EventColumns
from features.offline import compute_features
from features.online import StageAggregator
from features.spec import EventSchema, FeaturePlan, StreamView, make_agg
from tests.features.reference import brute_features

FUNCTIONS = ("count", "sum", "mean", "min", "max", "std", "var", "count_distinct")


@st.composite
def plans(draw):
    aggs_by_view = {}
    for view in ("card_v", "merch_v", "pair_v"):
        aggs = []
        for i, fn in enumerate(FUNCTIONS):
            window = draw(st.sampled_from([500, 1000, 3000, 6000]))
            slide = None
            if fn != "count_distinct" and draw(st.booleans()):
                slide = draw(st.sampled_from([d for d in (250, 500, 1000, 1500, 2000, 3000) if window % d == 0 and d < window]))
            column = "country" if fn == "count_distinct" else "amount"
            aggs.append(make_agg(view, f"{fn}_{i}", fn, column, window, slide))
        aggs_by_view[view] = tuple(aggs)
    lateness = draw(st.sampled_from([0, 200, 1000]))
    schema = EventSchema(
        fields=(("id", "string"), ("card", "string"), ("merch", "string"), ("amount", "double"), ("country", "string"), ("t", "timestamp")),
        event_id="id",
        timestamp_field="t",
        topic="events",
        allowed_lateness_ms=lateness,
    )
    views = (
        StreamView("card_v", ("card",), aggs_by_view["card_v"]),
        StreamView("merch_v", ("merch",), aggs_by_view["merch_v"]),
        StreamView("pair_v", ("card", "merch"), aggs_by_view["pair_v"]),
    )
    return FeaturePlan(service="s", schema=schema, stream_views=views, batch_views=(), vector=(), partition_key="card")


def _arrivals(rng, rows, stage, key, n_partitions, disorder_ms):
    order = sorted(range(len(rows)), key=lambda i: rows[i]["ts"] + int(rng.integers(0, disorder_ms + 1)))
    counters = {}
    for i in order:
        p = sum(map(ord, rows[i][key])) % n_partitions
        rows[i][f"_partition_{stage}"] = p
        rows[i][f"_offset_{stage}"] = counters.get(p, 0)
        counters[p] = counters.get(p, 0) + 1


def _forwarded(rng, rows, key, n_partitions):
    """Stage-1 arrival: first-stage partitions interleaved at random, each in its own order.

    This is what a repartition topic sees: every producer partition's records
    arrive in order, but partitions race each other.
    """
    queues = {}
    for i in sorted(range(len(rows)), key=lambda i: rows[i]["_offset_0"]):
        queues.setdefault(rows[i]["_partition_0"], []).append(i)
    counters = {}
    while queues:
        q = list(queues)[int(rng.integers(0, len(queues)))]
        take = queues[q][: int(rng.integers(1, 8))]
        queues[q] = queues[q][len(take) :]
        if not queues[q]:
            del queues[q]
        for i in take:
            p = sum(map(ord, rows[i][key])) % n_partitions
            rows[i]["_partition_1"] = p
            rows[i]["_offset_1"] = counters.get(p, 0)
            counters[p] = counters.get(p, 0) + 1


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


def run_online(plan, df, rng, n_stages):
    """Feed each stage's partitions in arrival order, in random micro-batches."""
    n = len(df)
    online = {}
    late_at = np.full(n, -1)
    source_wm = np.full(n, np.iinfo(np.int64).min // 4)
    table: dict[str, bytes] = {}
    for stage in range(n_stages):
        agg = StageAggregator(plan, stage)
        for p in sorted(df[f"_partition_{stage}"].unique()):
            idx = [
                i
                for i in df.index[df[f"_partition_{stage}"] == p].tolist()
                if late_at[i] < 0
            ]
            idx.sort(key=lambda i: df.at[i, f"_offset_{stage}"])
            pos = 0
            while pos < len(idx):
                batch = idx[pos : pos + int(rng.integers(1, 40))]
                pos += len(batch)
                sub = df.loc[batch]
                cols = EventColumns(
                    sub["ts"].to_numpy(np.int64),
                    sub[f"_offset_{stage}"].to_numpy(np.int64),
                    {c: sub[c].to_numpy() for c in df.columns},
                )
                sources = np.array(
                    [[df.at[i, "_partition_0"], df.at[i, "_offset_0"], source_wm[i]] for i in batch], dtype=np.int64
                )
                res = agg.process(table, int(p), cols, sources=sources if stage else None, n_sources=2)
                table.update(res.writes)
                for j, i in enumerate(batch):
                    if stage == 0:
                        source_wm[i] = res.watermark[j]
                    if res.late[j]:
                        late_at[i] = stage
                        continue
                    for name, values in res.features.items():
                        online.setdefault(name, np.full(n, np.nan))[i] = values[j]
    return late_at, online


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), seed=st.integers(0, 2**32 - 1), n=st.integers(1, 160), disorder=st.sampled_from([0, 300, 1500]))
def test_online_offline_and_brute_force_agree(plan, seed, n, disorder):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 15_000, n))
    rows = []
    for i in range(n):
        amount = float(rng.integers(0, 4)) if rng.random() < 0.4 else float(np.round(rng.normal(100, 30), 2))
        rows.append(
            {
                "id": f"e{i}",
                "card": f"c{rng.integers(0, 4)}",
                "merch": f"m{rng.integers(0, 3)}",
                "amount": amount,
                "country": ["US", "GB", "FR", "DE"][rng.integers(0, 4)],
                "ts": int(ts[i]),
            }
        )
    _arrivals(rng, rows, 0, "card", 2, disorder)
    _forwarded(rng, rows, "merch", 2)
    df = pd.DataFrame(rows)
    df["t"] = pd.to_datetime(df["ts"], unit="ms", utc=True)
    n_stages = len(plan.stages())
    assert n_stages == 2

    offline = compute_features(plan, df)
    brute_late, brute = brute_features(plan, rows, n_stages)
    online_late, online = run_online(plan, df, rng, n_stages)

    assert {i for i in range(n) if offline.late_stage[i] >= 0} == set(brute_late)
    assert {i for i in range(n) if online_late[i] >= 0} == set(brute_late)
    for i in range(n):
        if i in brute_late:
            continue
        for name, expected in brute[i].items():
            off = float(offline.frame.at[i, name])
            on = float(online[name][i])
            assert _close(off, expected), (i, name, off, expected)
            assert _close(on, off), (i, name, on, off)
