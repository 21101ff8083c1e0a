"""`sluice archive`: the events topic as a parquet archive by day, each offset once (stream/lifecycle/archive.py)."""

from __future__ import annotations

import signal
import threading

DEFAULT_PORT = 9468


def cmd_archive(args, settings) -> int:
    from stream.services.archiver import archive_topic, archiver_health

    topic = args.topic
    if topic is None:
        from features.feast_repo import load_plan, open_store
        from stream.kafka.topics import AppTopics

        topic = AppTopics.for_plan(settings, load_plan(open_store(settings.repo_path), settings.feature_service)).events
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    health = archiver_health(settings.bootstrap_servers, args.metrics_port, settings.metrics_host)
    try:
        n = archive_topic(
            settings.bootstrap_servers, topic, args.output, idle_s=args.idle, stop=stop, flush_s=args.flush_s,
            beat=health.beat,
        )
    finally:
        health.close()
    print(f"{n:,} messages of {topic} archived into {args.output} (partitioned by day and partition)")
    return 0


def add_parser(sub, settings_of) -> None:
    """`settings_of(args)` builds the Settings and checks that the broker answers."""
    from stream.cli import options

    p = sub.add_parser(
        "archive", help="keep a parquet archive of the events topic (partition, offset, broker time, bytes), each offset once",
    )
    options.add_broker(p, "required")
    options.add_repo(p)
    options.add_log_level(p)
    p.add_argument("--output", required=True, help="archive directory; a restart goes on where the files end")
    p.add_argument("--topic", help="topic to archive (default: the repo's events topic)")
    p.add_argument("--idle", type=float, default=None,
                   help="stop once nothing arrived for this many seconds (default: run until SIGTERM or Ctrl-C)")
    p.add_argument(
        "--metrics-port", type=int, default=DEFAULT_PORT,
        help=f"port of /metrics, /livez and /readyz, 0 = off (default {DEFAULT_PORT}, not the worker's SLUICE_METRICS_PORT)",
    )
    p.add_argument("--flush-s", type=float, default=2.0, help="write each partition's new messages this often (default 2)")
    p.set_defaults(func=lambda args: cmd_archive(args, settings_of(args)))
