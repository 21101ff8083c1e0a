"""`sluice label-join`: the label join in workers of its own, off the scoring path (stream/worker/join_app.py)."""

from __future__ import annotations

from stream.cli import options

DEFAULT_PORT = 9470


def add_parser(subparsers, settings_of) -> None:
    """`settings_of(args)` builds the Settings and checks that the broker answers."""
    p = subparsers.add_parser(
        "label-join",
        help="join the labels topic to a consumer group's prediction log in join-only workers (SLUICE_LABEL_JOIN=service)",
        description=(
            "Run the label join (labels joined to prediction_log by event id, onto the labeled topic, with the online "
            "evaluation gauges) in a Faust worker of its own, consumer group <app id>-join, with a changelog-backed "
            "table and no scoring stage and no model. Start the scoring workers with SLUICE_LABEL_JOIN=service, so they "
            "neither read labels nor their prediction log. Several join workers split the partitions. Topics and Kafka "
            "security come from the same SLUICE_* settings as the worker's; one data directory (SLUICE_DATA_DIR) per process."
        ),
    )
    options.add_broker(p, "required")
    options.add_repo(p)
    p.add_argument("--app-id", help=f"the workers' app id; joins in group <app id>-join ({options.env_default('app_id')})")
    options.add_partitions(p)
    options.add_log_level(p)
    p.add_argument("--store", help=f"Faust table store ({options.env_default('store')})")
    p.add_argument(
        "--metrics-port", type=int, default=DEFAULT_PORT,
        help=f"port of /metrics, /livez and /readyz, 0 = off (default {DEFAULT_PORT}, not the worker's SLUICE_METRICS_PORT)",
    )
    p.set_defaults(func=lambda args: run(settings_of(args)))


def run(settings) -> int:
    from stream.feast.unchecked import import_feast_unchecked

    import_feast_unchecked()
    from stream.worker.join_app import run_join_worker

    run_join_worker(settings)
    return 0
