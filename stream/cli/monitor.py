"""`sluice monitor`: drift, data quality and outcome rates of a consumer group (stream/services/monitor.py)."""

from __future__ import annotations

from features.errors import SluiceError
from stream.cli import options

DEFAULT_PORT = 9466


def add_parser(subparsers, settings_of) -> None:
    """`settings_of(args)` builds the Settings from the flags."""
    p = subparsers.add_parser(
        "monitor",
        help="watch a consumer group's prediction log: drift per model version, data quality, DLQ and late rates",
        description=(
            "Read prediction_log (and the events topic's .dlq and .late copies) in its own consumer group, keep "
            "sliding windows of histograms per model version the current deployment serves, against the reference "
            "in model.json, write every alert and recovery to the monitoring topic and serve its own gauges on "
            "--metrics-port. One process per consumer group (--app-id): it judges that group's records only. Topics, "
            "registry and Kafka security come from the same SLUICE_* settings as the worker's "
            "(SLUICE_PREDICTION_LOG_TOPIC, SLUICE_MONITORING_TOPIC, SLUICE_DEPLOYMENTS_TOPIC, SLUICE_REGISTRY, ...)."
        ),
    )
    options.add_group_service(p, "monitor", DEFAULT_PORT)
    p.add_argument("--thresholds", help="YAML or JSON file of thresholds and window sizes (see stream/monitor/thresholds.py)")
    p.add_argument("--events-topic", help="the workers' events topic (default: the repo's KafkaSource topic)")
    p.add_argument(
        "--attribution-budget", type=float, default=0.05,
        help="share of one core for attribution drift (TreeSHAP on a sample; default 0.05, 0 = off)",
    )
    p.set_defaults(func=lambda args: run(args, settings_of(args)))


def run(args, settings) -> int:
    if settings.bootstrap_servers is None:
        msg = "`sluice monitor` reads the workers' topics: pass --bootstrap-servers (or SLUICE_BOOTSTRAP_SERVERS)"
        raise SluiceError(msg)
    from stream.kafka.reach import check_reachable

    check_reachable(settings)  # one line now, before the monitor's clients start and retry
    from stream.services.monitor import run_monitor

    settings = settings.with_(metrics_port=args.metrics_port)
    run_monitor(settings, thresholds_path=args.thresholds, events_topic=args.events_topic, core_share=args.attribution_budget)
    return 0
