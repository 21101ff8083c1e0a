"""Synthetic histories of any size for a plan's event schema, written by DuckDB without holding them in memory.

What the out-of-core measurements read: `n` events over `days`, a few
seconds apart and somewhat out of order (a share late, as a real log has
them), entity keys drawn from `entities` values per join key (a skewed
draw: some entities far busier than others), amounts log-normal-ish, other
text fields from a handful of values. Seeded: the same arguments write the
same file.
"""

from __future__ import annotations

from pathlib import Path

from features.spec import FeaturePlan

#: 2026-10-01T00:00:00Z in epoch milliseconds: where synthetic time starts.
START_MS = 1_790_812_800_000


def _column(name: str, kind: str, keys: set[str], entities: int, seed: int, event_id: str) -> str:
    draw = f"hash(i, {seed}, '{name}')"
    if name == event_id:
        return f"'e' || i::VARCHAR AS \"{name}\""
    if name in keys:
        # Squaring a uniform draw skews it: low-numbered entities get most events.
        return f"'{name[:1]}-' || (floor(pow(({draw} % 1000003) / 1000003.0, 2) * {entities}))::BIGINT::VARCHAR AS \"{name}\""
    if kind == "string":
        return f"'{name[:2]}' || ({draw} % 7)::VARCHAR AS \"{name}\""
    if kind == "double":
        return f"round(exp(({draw} % 100000) / 12500.0), 2) AS \"{name}\""
    if kind == "long":
        return f"({draw} % 1000)::BIGINT AS \"{name}\""
    if kind == "bool":
        return f"({draw} % 2 = 0) AS \"{name}\""
    msg = f"no synthetic values for field {name!r} of kind {kind!r}"
    raise ValueError(msg)


def write_history(plan: FeaturePlan, path: str | Path, n: int, *, entities: int = 100_000, days: float = 30.0,
                  disorder_ms: int = 6 * 60_000, seed: int = 0) -> Path:
    """Write `n` synthetic events of `plan`'s schema to the parquet file `path`."""
    import duckdb

    schema = plan.schema
    keys = {k for v in (*plan.stream_views, *plan.batch_views) for k in v.join_keys}
    step_ms = max(1, int(days * 86_400_000 / max(n, 1)))
    columns = [_column(name, kind, keys, entities, seed, schema.event_id) for name, kind in schema.fields if name != schema.timestamp_field]
    ts = f"make_timestamptz(({START_MS} + i * {step_ms} - hash(i, {seed}, 'late') % {disorder_ms + 1})::BIGINT * 1000)"
    # Arrival: four events partitions by the partition key, offsets in row order (only their order counts).
    arrival = f'hash("{plan.partition_key}") % 4 AS _partition_0, i AS _offset_0'
    con = duckdb.connect()
    con.execute("SET memory_limit='512MB'; SET threads=1")
    con.execute(f"COPY (SELECT * EXCLUDE (i), {arrival} FROM (SELECT i, {', '.join(columns)}, {ts} AS \"{schema.timestamp_field}\" FROM range({int(n)}) t(i))) "
                f"TO '{Path(path)}' (FORMAT parquet, ROW_GROUP_SIZE 100000)")
    con.close()
    return Path(path)
