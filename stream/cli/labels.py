"""`sluice train --from-labeled PATH` and `sluice labeled-sink`: training on what was served, and its dataset."""

from __future__ import annotations

from pathlib import Path

from stream.cli import training as training_cmd
from stream.kafka.topics import AppTopics


def add_train_argument(p) -> None:
    p.add_argument(
        "--from-labeled", metavar="PATH",
        help="train on the served vectors of a labeled parquet dataset (sluice labeled-sink) instead of the history; "
        "with --bootstrap-servers, a sample is recomputed offline from the prediction log's events and the skew reported",
    )
    p.add_argument("--skew-sample", type=int, default=2000, help="rows the skew check recomputes (default 2000)")


def train(args, settings) -> int:
    from stream.lifecycle.labeled_train import train_from_labeled
    from stream.registry import registry_location

    result = train_from_labeled(
        settings.repo_path, registry_location(settings), args.from_labeled, service=settings.feature_service,
        num_trees=args.trees, **training_cmd.options(args),
    )
    print(training_cmd.summary(result))
    if settings.bootstrap_servers is None:
        print("skew check skipped: it reads the prediction log's events; pass --bootstrap-servers (and the log's topic "
              "in SLUICE_PREDICTION_LOG_TOPIC)")
        return 0
    report = skew_check(settings, args.from_labeled, args.skew_sample)
    print(f"skew check: {report.rows:,} rows recomputed offline, {report.values:,} values, {report.mismatches} mismatches "
          f"(largest difference {report.max_abs_diff:.3g})")
    for example in report.examples:
        print(f"  e.g. {example}")
    return 0 if report.mismatches == 0 else 1


def skew_check(settings, path, sample: int):
    from features.feast_repo import load_plan, open_store
    from stream.lifecycle.labeled_train import events_frame, offline_vectors, read_dataset, skew
    from stream.services.labels import log_records

    plan = load_plan(open_store(settings.repo_path), settings.feature_service)
    rows = read_dataset(path, plan.schema.event_id)
    log = log_records(settings.bootstrap_servers, AppTopics.named(settings).prediction_log, plan.schema.event_id)
    offline = offline_vectors(settings.repo_path, events_frame(plan, log), settings.feature_service)
    return skew(plan, rows, offline, sample=sample)


def cmd_sink(args, settings) -> int:
    from features.feast_repo import load_plan, open_store
    from stream.services.labels import sink

    plan = load_plan(open_store(settings.repo_path), settings.feature_service)
    n = sink(settings.bootstrap_servers, AppTopics.named(settings).labeled, Path(args.output), plan.schema.event_id, idle_s=args.idle)
    print(f"{n:,} labeled records -> {args.output} (partitioned by day)")
    return 0


def add_sink_parser(sub, settings_of) -> None:
    """`settings_of(args)` builds the Settings and checks that the broker answers."""
    from stream.cli import options

    p = sub.add_parser("labeled-sink", help="write the labeled topic (the label join's records) as parquet, partitioned by day")
    options.add_broker(p, "required")
    options.add_repo(p)
    options.add_log_level(p)
    p.add_argument("--output", required=True, help="dataset directory (replaced)")
    p.add_argument("--idle", type=float, default=5.0, help="stop once nothing arrived for this many seconds (default 5)")
    p.set_defaults(func=lambda args: cmd_sink(args, settings_of(args)))
