"""Offline commands: `sluice warm` and `sluice backfill` (in memory, or out of core through stream/cli/batch.py)."""

from __future__ import annotations

import time
from pathlib import Path

from features.errors import SluiceError
from stream.cli import batch as batch_cmd
from stream.cli import training as training_cmd
from stream.cli.options import settings_of


def warm(args) -> int:
    """`sluice warm`: entity states from a history, for a worker to start from (SLUICE_WARM_STATE)."""
    import pandas as pd

    from features.feast_repo import load_plan, open_store
    from features.warm import save, warm_state
    from stream.lifecycle.train import history_path

    settings = settings_of(args)
    store = open_store(settings.repo_path)
    plan = load_plan(store, settings.feature_service)
    source = Path(args.history) if args.history else history_path(store, plan, settings.repo_path)
    started = time.perf_counter()
    warm = warm_state(plan, pd.read_parquet(source))
    save(warm, args.output)
    size = sum(len(k) + len(v) for k, v in warm.items())
    print(f"warm state: {len(warm):,} entity states, {size / max(len(warm), 1):.0f} bytes each on average, "
          f"{time.perf_counter() - started:.1f} s -> {args.output}")
    return 0


def backfill(args) -> int:
    """`sluice backfill`: the stream features of a history (or of given rows), as the stream computes them."""
    import pandas as pd

    from features.feast_repo import load_plan, open_store
    from features.offline import compute_features, features_at
    from stream.lifecycle.archive_history import order_of, read_archive
    from stream.lifecycle.train import history_path

    settings = settings_of(args)
    if batch_cmd.out_of_core(args):
        if args.rows or args.to_feast:
            msg = "--rows and --to-feast work in memory only; drop --shards/--ray"
            raise SluiceError(msg)
        return batch_cmd.backfill(args, settings)
    store = open_store(settings.repo_path)
    plan = load_plan(store, settings.feature_service)
    if args.from_archive:
        history = read_archive(args.from_archive, plan, settings=settings).frame
    else:
        history = pd.read_parquet(Path(args.history) if args.history else history_path(store, plan, settings.repo_path))
    started = time.perf_counter()
    if args.rows:
        rows = pd.read_parquet(args.rows)
        values = features_at(plan, history, rows, args.timestamp_column)
        out = pd.concat([rows.reset_index(drop=True), values.reset_index(drop=True)], axis=1)
        what = f"{len(rows):,} rows over {len(history):,} events"
    else:
        result = compute_features(plan, history)
        keys = [plan.schema.event_id, plan.schema.timestamp_field, *dict.fromkeys(k for v in plan.stream_views for k in v.join_keys)]
        keys += [c for c in ("partition", "offset") if c in history]  # where an archived event arrived
        out = pd.concat([history[keys].reset_index(drop=True), result.frame.reset_index(drop=True)], axis=1)
        out["late_stage"] = result.late_stage
        what = f"{len(history):,} events"
    seconds = time.perf_counter() - started
    out.to_parquet(args.output, index=False)
    rate = len(history) / seconds if seconds else float("inf")
    print(f"backfilled {what} in {seconds:.2f} s ({rate:,.0f} events/s) -> {args.output}")
    order = order_of(history)
    print(training_cmd.order_line(f"{order} {args.from_archive}" if args.from_archive else order))
    if args.to_feast:
        from stream.feast.offline_store import register_backfill

        for name in register_backfill(store, plan, Path(args.output).resolve()):
            print(f"registered Feast feature view {name} (offline) over {args.output}")
    return 0
