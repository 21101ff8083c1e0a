"""`sluice ui`: the status page of a consumer group (stream/ui/)."""

from __future__ import annotations

from features.errors import SluiceError
from stream.cli import options

DEFAULT_PORT = 9465


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ui",
        help="a live status page for the whole consumer group: throughput, latency, outcomes, drift, alerts, deployments",
        description=(
            "Serve a status page that refreshes by itself. One process for the whole consumer group: it reads the "
            "prediction log, the dead-letter and late topics, `monitoring`, `deployments` and `labeled`, and scrapes "
            "every worker's /metrics. Read-only and unauthenticated: it binds to 127.0.0.1 unless --host says otherwise."
        ),
    )
    options.add_broker(p, "required")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT}; 0 = a free one)")
    p.add_argument(
        "--metrics-url", action="append", default=[], metavar="URL",
        help="a worker's metrics endpoint, e.g. http://127.0.0.1:9464/metrics; repeat for every worker, or "
        "dns+http://worker:9464/metrics for every address a name resolves to",
    )
    p.add_argument(
        "--events-topic", action="append", default=[], metavar="TOPIC",
        help="show TOPIC.dlq and TOPIC.late (repeatable; default: every topic named *.dlq or *.late)",
    )
    p.add_argument("--prediction-log-topic", help=f"topic of the workers' prediction log ({options.env_default('prediction_log_topic')})")
    p.add_argument("--monitoring-topic", help=f"topic of the monitor's alerts ({options.env_default('monitoring_topic')})")
    p.add_argument("--deployments-topic", help=f"topic of the deployment records ({options.env_default('deployments_topic')})")
    p.add_argument("--labeled-topic", help=f"topic of the label join's records ({options.env_default('labeled_topic')})")
    p.add_argument("--window", type=int, default=600, help="seconds of history in the charts (default 600)")
    p.add_argument("--lookback", type=float, default=900, help="read records from this many seconds before start (default 900)")
    p.add_argument("--refresh", type=float, default=2.0, help="seconds between page updates and scrapes (default 2)")
    p.set_defaults(func=run)


def run(args) -> int:
    from stream.kafka.clients import configure
    from stream.settings import Settings
    from stream.ui.feed import Topics
    from stream.ui.server import run_ui

    settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers)
    if settings.bootstrap_servers is None:
        msg = "sluice ui reads the topics of running workers: pass --bootstrap-servers (or set SLUICE_BOOTSTRAP_SERVERS)"
        raise SluiceError(msg)
    if args.window <= 0 or args.refresh <= 0 or args.lookback < 0:
        msg = "--window and --refresh must be positive and --lookback not negative"
        raise SluiceError(msg)
    from stream.kafka.reach import check_reachable

    check_reachable(settings)
    configure(settings)
    from stream.kafka.topics import AppTopics

    named = AppTopics.named(settings)
    topics = Topics(
        prediction_log=args.prediction_log_topic or named.prediction_log,
        monitoring=args.monitoring_topic or named.monitoring,
        deployments=args.deployments_topic or named.deployments,
        labeled=args.labeled_topic or named.labeled,
        events=tuple(args.events_topic),
    )
    return run_ui(
        settings.bootstrap_servers, topics, args.metrics_url, host=args.host, port=args.port,
        window_s=args.window, lookback_s=args.lookback, refresh_ms=int(args.refresh * 1000), scrape_interval_s=args.refresh,
    )
