"""`sluice batch-score`, and `sluice backfill --shards/--ray`: the out-of-core driver (stream/tools/batch.py) from the command line."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

#: Events per shard when --shards is not given: what one task holds in memory at a time.
SHARD_ROWS = 500_000


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of an out-of-core run: shards, scratch space, Ray."""
    p.add_argument("--shards", type=int, help=f"entity shards (default: one per {SHARD_ROWS:,} events)")
    p.add_argument("--shard-rows", type=int, help=f"events per shard when --shards is not given (default {SHARD_ROWS}); giving it makes a backfill run out of core")
    p.add_argument("--work-dir", help="scratch directory for the shards (default: a temporary one beside --output, else in the system's temp directory)")
    from stream.tools.batch_job import MEMORY_LIMIT

    p.add_argument("--memory-limit", default=MEMORY_LIMIT,
                   help=f"DuckDB's memory limit while sharding; beyond it, it spills (default {MEMORY_LIMIT})")
    p.add_argument("--ray", action="store_true", help="run the shards as Ray tasks on a local Ray")
    p.add_argument("--ray-address", metavar="ADDR", help="run the shards as Ray tasks on this Ray cluster (e.g. ray://head:10001)")
    p.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray (default: all)")


def add_parser(sub, settings_of, reach) -> None:
    p = sub.add_parser(
        "batch-score",
        help="score a history of events as the stream would have, out of core or on Ray, into a parquet dataset",
        description=(
            "Every event of --history gets what the stream publishes for it: windowed features by the worker's "
            "kernel (lateness per events partition, arrival order from _partition_<stage>/_offset_<stage> columns "
            "when present, else event time), batch features from the online store, the deployment in force "
            "(from the deployments topic with --bootstrap-servers, else the model directory's champion), routes, "
            "rules and thresholds. Late events come out with outcome=late. Output: a directory of parquet files."
        ),
    )
    from stream.cli import options

    options.add_repo(p)
    options.add_model_dir(p)
    options.add_app_id(p)
    options.add_broker(p, "read the deployment in force from this broker's deployments topic "
                          "(default: the model directory's champion, alone)")
    options.add_log_level(p)
    p.add_argument("--history", help="events parquet file or directory (default: the stream view's batch source)")
    p.add_argument("--output", required=True, help="directory to write the parquet dataset to (its part-*.parquet files are replaced)")
    p.add_argument("--chunk-rows", type=int, default=100_000, help="events scored per model call (default 100000)")
    add_scale_arguments(p)
    p.set_defaults(func=lambda args: cmd_batch_score(args, settings_of(args), reach))


def _plan_and_history(settings, history):
    from features.feast_repo import load_plan, open_store
    from stream.lifecycle.train import history_path

    store = open_store(settings.repo_path)
    plan = load_plan(store, settings.feature_service)
    return plan, Path(history) if history else history_path(store, plan, settings.repo_path)


def _job(args, settings, plan, history, serving):
    from stream.tools.batch import BatchJob, count_rows, shard_count

    shards = args.shards or shard_count(count_rows(history), args.shard_rows or SHARD_ROWS)
    output = getattr(args, "output", None)
    work = args.work_dir or tempfile.mkdtemp(prefix="sluice-batch-", dir=Path(output).resolve().parent if output else None)
    return BatchJob(plan, str(Path(settings.repo_path).resolve()), str(work), shards, serving,
                    chunk_rows=getattr(args, "chunk_rows", 100_000), memory_limit=args.memory_limit)


def _runner(args):
    from stream.tools.batch import Runner

    if args.ray_address:
        return Runner(args.ray_address)
    return Runner("local", num_cpus=args.ray_cpus) if args.ray else Runner()


def _serving(settings, reach):
    from stream.cli.deploy import current
    from stream.registry import local_folder, open_registry
    from stream.tools.batch import ServingSpec

    if settings.bootstrap_servers is not None:
        reach(settings)
    registry = open_registry(settings)
    deployment = current(settings, records=None if settings.bootstrap_servers else [], registry=registry)
    folder_of = local_folder(registry)
    folders = {v: str(Path(folder_of(v)).resolve()) for v in (*deployment.versions, *deployment.fallback_versions)}
    return ServingSpec(deployment, folders, settings.reason_share, settings.reason_k, settings.reason_method)


def _rates(report, runner) -> str:
    total = report.seconds.get("total") or float("inf")
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items() if k not in ("total", "task_cpu"))
    cpu = report.seconds.get("task_cpu") or float("inf")
    parts += f"; tasks {report.events / cpu:,.0f} events per CPU-second"
    where = "one process" if runner.ray is None else f"Ray ({runner.ray})"
    return f"{report.events:,} events ({report.late:,} late) in {total:.1f} s, {report.events / total:,.0f} events/s on {where} [{parts}]"


def cmd_batch_score(args, settings, reach) -> int:
    from stream.tools.batch import run

    plan, history = _plan_and_history(settings, args.history)
    serving = _serving(settings, reach)
    runner = _runner(args)
    job = _job(args, settings, plan, history, serving)
    report = run(job, history, args.output, runner)
    print(f"batch-scored {_rates(report, runner)}: {report.predictions:,} predictions "
          f"(deployment {serving.deployment.seq}, champion {serving.deployment.champion}) -> {args.output}")
    return 0


def backfill(args, settings) -> int:
    """`sluice backfill` out of core: the same columns as in memory, as a parquet dataset in --output."""
    from stream.tools.batch import run

    plan, history = _plan_and_history(settings, args.history)
    runner = _runner(args)
    report = run(_job(args, settings, plan, history, None), history, args.output, runner)
    print(f"backfilled {_rates(report, runner)} -> {args.output}")
    return 0


def out_of_core(args) -> bool:
    """True when a backfill asked for shards, a shard size or Ray."""
    return bool(args.shards or args.shard_rows or args.ray or args.ray_address)


def training_features(args, settings):
    """For `sluice train --shards/--ray`: the training-set builder's windowed features, a shard at a time."""
    from stream.tools.batch import offline_features

    def features(plan, history, source):
        return offline_features(_job(args, settings, plan, source, None), source, history.index, _runner(args))

    return features
