"""`sluice skew`: served features against the archive, in arrival order and in event-time order (stream/lifecycle/skew.py)."""

from __future__ import annotations

import json


def _window(records: list[dict], since: str | None, until: str | None) -> list[dict]:
    """The records whose event time is in [since, until)."""
    if since is None and until is None:
        return records
    import pandas as pd

    times = pd.to_datetime([r["event_time"] for r in records], utc=True, format="ISO8601")
    keep = [True] * len(records)
    if since is not None:
        keep = [k and t >= pd.Timestamp(since) for k, t in zip(keep, times)]
    if until is not None:
        keep = [k and t < pd.Timestamp(until) for k, t in zip(keep, times)]
    return [r for r, k in zip(records, keep) if k]


def read_served(bootstrap: str, topic: str, *, app_id: str | None, idle_s: float) -> tuple[list[dict], int]:
    """Every readable prediction-log record of `topic` (of `app_id` only, if given), and how many were unreadable."""
    import orjson

    from stream.kafka.reader import read_topic
    from stream.pipeline.records import read_log

    records, unreadable = [], 0
    for msg in read_topic(bootstrap, topic, idle_s=idle_s, timeout_s=3600):
        try:
            record = read_log(msg.value())
            record["arrival"][0]  # noqa: B018 - a record without its arrival cannot be matched
        except (orjson.JSONDecodeError, TypeError, KeyError, IndexError):
            unreadable += 1
            continue
        if app_id is None or record.get("app_id") == app_id:
            records.append(record)
    return records, unreadable


def cmd_skew(args, settings) -> int:
    from features.feast_repo import load_plan, open_store
    from stream.kafka.topics import AppTopics
    from stream.lifecycle.archive_history import read_archive
    from stream.lifecycle.skew import skew, table

    plan = load_plan(open_store(settings.repo_path), settings.feature_service)
    topic = args.topic or AppTopics.for_plan(settings, plan).prediction_log
    served, unreadable = read_served(settings.bootstrap_servers, topic, app_id=args.app_id, idle_s=args.idle)
    served = _window(served, args.since, args.until)
    history = read_archive(args.archive, plan, settings=settings)
    report = skew(plan, history.frame, served)
    if args.json:
        print(json.dumps({**report.as_dict(), "topic": topic, "archive": str(args.archive), "unreadable": unreadable,
                          "since": args.since, "until": args.until}))
        return 0
    print(f"skew of {report.compared:,} served events of {topic} against the archive {args.archive} "
          f"({report.missing:,} not in the archive, {unreadable:,} unreadable records)")
    print("differ: share of events whose served value differs from the offline value; |d|: size of those differences")
    for line in table(report):
        print(line)
    return 0


def add_parser(sub, settings_of) -> None:
    """`settings_of(args)` builds the Settings and checks that the broker answers."""
    from stream.cli import options

    p = sub.add_parser(
        "skew",
        help="per feature, the share of served events whose value differs from the offline value computed from the "
        "archive in arrival order, and in event-time order (what a plain history trains on)",
    )
    options.add_broker(p, "required")
    options.add_repo(p)
    options.add_log_level(p)
    p.add_argument("--archive", required=True, help="the events archive (`sluice archive --output`)")
    p.add_argument("--topic", help="prediction log to read (default: the app's, SLUICE_PREDICTION_LOG_TOPIC)")
    p.add_argument("--app-id", help="compare only records this app id (consumer group) wrote (default: every record)")
    p.add_argument("--since", help="only events at or after this event time (ISO-8601, e.g. 2026-11-01T00:00:00Z)")
    p.add_argument("--until", help="only events before this event time")
    p.add_argument("--idle", type=float, default=3.0, help="stop reading the log once nothing arrived for this many seconds (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=lambda args: cmd_skew(args, settings_of(args)))
