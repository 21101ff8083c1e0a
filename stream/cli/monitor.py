"""`sluice monitor`: drift, data quality and outcome rates of a consumer group (stream/tools/monitor.py)."""

from __future__ import annotations

from features.errors import SluiceError

DEFAULT_PORT = 9466


def add_parser(subparsers, common, settings_of) -> None:
    """`common(p)` adds the shared flags; `settings_of(args)` builds the Settings."""
    p = subparsers.add_parser(
        "monitor",
        help="watch a consumer group's prediction log: drift per model version, data quality, DLQ and late rates",
        description=(
            "Read prediction_log (and the events topic's .dlq and .late copies) in its own consumer group, keep "
            "sliding windows of histograms per model version against the reference in model.json, write every alert "
            "and recovery to the `monitoring` topic and serve the gauges on --metrics-port. One process per group."
        ),
    )
    common(p)
    p.add_argument("--metrics-port", type=int, default=DEFAULT_PORT, help=f"Prometheus port, 0 = off (default {DEFAULT_PORT})")
    p.add_argument("--thresholds", help="YAML or JSON file of thresholds and window sizes (see stream/monitor/thresholds.py)")
    p.add_argument("--events-topic", help="the workers' events topic (default: the repo's KafkaSource topic)")
    p.add_argument(
        "--attribution-budget", type=float, default=0.05,
        help="share of one core for attribution drift (TreeSHAP on a sample; default 0.05, 0 = off)",
    )
    p.set_defaults(func=lambda args: run(args, settings_of(args)))


def run(args, settings) -> int:
    from stream.tools.monitor import run_monitor

    if settings.bootstrap_servers is None:
        msg = "`sluice monitor` reads the workers' topics: pass --bootstrap-servers (or SLUICE_BOOTSTRAP_SERVERS)"
        raise SluiceError(msg)
    settings = settings.with_(metrics_port=args.metrics_port)
    run_monitor(settings, thresholds_path=args.thresholds, events_topic=args.events_topic, core_share=args.attribution_budget)
    return 0
