"""State memory per entity, measured through the worker's own aggregators (no broker)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
import time

import numpy as np
import psutil

from stream.tools.workload import synthetic_columns

def measure_state(plan, n_entities: int, seed: int, start_ms: int, batch: int = 10_000) -> dict:
    """Bytes of window state per active entity, fed through the worker's own aggregators.

    Every entity (of the partition key) gets two events within 12 hours, so
    at the end each one is active in every window of 12 h or more.
    Each stage gets its own dict, as each stage has its own Faust table.
    """
    from features.online import StageAggregator

    started = time.perf_counter()
    events = synthetic_columns(plan, n_entities, seed, start_ms, span_ms=12 * 3_600_000)
    stages = range(len(plan.stages()))
    aggregators = [StageAggregator(plan, s) for s in stages]
    # One small batch through throwaway aggregators and tables first, so lazy
    # imports and first-use allocations are not counted as state.
    feed([StageAggregator(plan, s) for s in stages], [{} for _ in stages], events.take(np.arange(min(batch, len(events)))))
    tables: list[dict[str, bytes]] = [{} for _ in stages]
    rss_before = _live_rss()
    for lo in range(0, len(events), batch):
        feed(aggregators, tables, events.take(np.arange(lo, min(lo + batch, len(events)))))
    # The aggregators' own caches are not table state; `events` stays alive,
    # as it was when measuring before.
    del aggregators
    rss_after = _live_rss()
    return state_report(tables, n_entities, rss_after - rss_before, time.perf_counter() - started)


def _live_rss() -> int:
    """Resident memory after collecting garbage and handing freed heap pages back to the OS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss


def feed(aggregators: list, tables: list[dict[str, bytes]], columns) -> None:
    """One micro-batch through every stage, storing the writes as the worker does."""
    first = aggregators[0].process(tables[0], 0, columns)
    tables[0].update(first.writes)
    # Later stages get what the first forwards: (partition, offset, watermark).
    sources = np.column_stack([np.zeros(len(columns), np.int64), columns.seq, first.watermark])
    for stage in range(1, len(aggregators)):
        result = aggregators[stage].process(tables[stage], 0, columns, sources=sources, n_sources=1)
        tables[stage].update(result.writes)


def state_report(tables: list[dict[str, bytes]], n_entities: int, rss_delta: int, seconds: float) -> dict:
    """Three views of the same state, per entity: serialized bytes (what a changelog
    or a RocksDB store holds), Python objects (what Faust's in-memory table
    holds), and the process's RSS growth (the objects plus allocator slack)."""
    per_view: dict[str, dict] = {}
    payload = python = 0
    for table in tables:
        for key, value in table.items():
            if key.startswith("\x00"):  # per-partition bookkeeping, not per entity
                continue
            # The worker's Faust table holds the key as UTF-8 bytes.
            key_bytes = key.encode()
            view = per_view.setdefault(key.split("/", 1)[0], {"entries": 0, "bytes": 0})
            view["entries"] += 1
            view["bytes"] += len(key_bytes) + len(value)
            payload += len(key_bytes) + len(value)
            python += sys.getsizeof(key_bytes) + sys.getsizeof(value)
        python += sys.getsizeof(table)  # the hash table itself
    for view in per_view.values():
        view["bytes_per_entry"] = round(view["bytes"] / max(view["entries"], 1), 1)
    return {
        "entities": n_entities,
        "events": 2 * n_entities,
        "bytes_per_entity": round(payload / n_entities, 1),
        "python_bytes_per_entity": round(python / n_entities, 1),
        "rss_bytes_per_entity": round(rss_delta / n_entities, 1),
        "per_view": per_view,
        "seconds": round(seconds, 1),
    }
