"""`sluice send`: events from JSON lines, CSV or parquet to the events topic, keyed as the worker expects.

The topic, the key field and the field types come from the feature repo, so
what a user sends is keyed by the partition key exactly as the worker needs
(`str(value)` in UTF-8, librdkafka's default partitioner, the worker's own).
JSON lines are sent as they are, byte for byte; CSV and parquet rows are
written as JSON objects with the types the stream source declares. A row this
command cannot read (not JSON, a CSV number that is not a number) is still
sent as it is: the worker is the judge of validity and dead-letters it with
the reason, so nothing disappears on the way in.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

#: Rows read from a parquet file at a time (bounded memory for big files).
PARQUET_BATCH_ROWS = 10_000


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "send",
        help="send events (JSON lines, CSV or parquet) to the events topic, keyed by the partition key",
        description=(
            "Send events to the FeatureService's events topic, keyed by its partition key as the worker expects. "
            "JSON lines go byte for byte; CSV and parquet rows become JSON objects typed by the stream source's schema. "
            "Rows that cannot be read are sent as they are, for the worker to dead-letter with a reason."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="FILE", help="*.jsonl / *.ndjson / *.json (one object per line), *.csv or *.parquet; - reads JSON lines from stdin")
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (env SLUICE_BOOTSTRAP_SERVERS); required: send starts no broker")
    p.add_argument("--repo", dest="repo_path", help="Feast feature repository (env SLUICE_REPO; default feature_repo)")
    p.add_argument("--feature-service", help="FeatureService whose events these are (env SLUICE_FEATURE_SERVICE; default: the only one)")
    p.add_argument("--topic", help="topic to send to (default: the stream source's topic)")
    p.add_argument("--rate", type=float, default=0.0, help="events per second (default 0: as fast as possible)")
    p.add_argument("--limit", type=int, default=None, help="send at most this many events")
    p.add_argument("--progress-s", type=float, default=1.0, help="seconds between progress lines on stderr (0: none)")
    p.set_defaults(func=run, parser=p)


def run(args) -> int:
    from features.feast_repo import load_plan, open_store
    from stream.kafka.clients import configure, make_producer, topic_partitions
    from stream.kafka.reach import check_reachable
    from stream.settings import Settings

    settings = Settings.from_env(repo_path=args.repo_path, feature_service=args.feature_service, bootstrap_servers=args.bootstrap_servers)
    if not settings.bootstrap_servers:
        args.parser.error("give --bootstrap-servers (or SLUICE_BOOTSTRAP_SERVERS): send needs a running broker")
    check_reachable(settings)
    configure(settings)
    plan = load_plan(open_store(settings.repo_path), settings.feature_service)
    topic = args.topic or plan.schema.topic
    if not topic_partitions(settings.bootstrap_servers, topic):
        print(f"sluice send: topic {topic} does not exist yet; the broker creates it on the first message if it allows that", file=sys.stderr)
    sender = Sender(make_producer(settings.bootstrap_servers), topic, plan.partition_key, args.rate, args.progress_s)
    for path in args.inputs:
        for value in read_rows(path, dict(plan.schema.fields)):
            if args.limit is not None and sender.sent >= args.limit:
                break
            sender.send(value)
    return sender.finish()


class Sender:
    """Produces values keyed by one field, paced to a rate, counting deliveries."""

    def __init__(self, producer, topic: str, key_field: str, rate: float, progress_s: float):
        self.producer, self.topic, self.key_field = producer, topic, key_field
        self.rate, self.progress_s = rate, progress_s
        self.sent = self.delivered = self.unkeyed = 0
        self.errors: list[str] = []
        self.started = self.reported = time.perf_counter()

    def send(self, value: bytes) -> None:
        if self.rate > 0:
            due = self.started + self.sent / self.rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        key = key_of(value, self.key_field)
        if key is None:
            self.unkeyed += 1
        while True:
            try:
                self.producer.produce(self.topic, value, key, on_delivery=self._delivered)
                break
            except BufferError:  # the client's queue is full: let deliveries drain it
                self.producer.poll(0.1)
        self.sent += 1
        self.producer.poll(0)
        now = time.perf_counter()
        if self.progress_s > 0 and now - self.reported >= self.progress_s:
            self.reported = now
            print(f"sent {self.sent:,} ({self.sent / (now - self.started):,.0f}/s), delivered {self.delivered:,}", file=sys.stderr, flush=True)

    def _delivered(self, err, msg) -> None:
        if err is None:
            self.delivered += 1
        elif len(self.errors) < 5:
            self.errors.append(str(err))

    def finish(self, timeout_s: float = 60.0) -> int:
        left = self.producer.flush(timeout_s)
        elapsed = time.perf_counter() - self.started
        line = f"sent {self.sent:,} events to {self.topic} in {elapsed:.1f} s ({self.sent / max(elapsed, 1e-9):,.0f}/s); delivered {self.delivered:,}"
        if self.unkeyed:
            line += f"; {self.unkeyed:,} had no readable {self.key_field!r} and went with a null key (the worker dead-letters them)"
        print(line, flush=True)
        failed = self.sent - self.delivered
        if failed:
            why = "; ".join(self.errors) or f"{left} still queued after {timeout_s:g} s"
            print(f"sluice send: {failed:,} events were not delivered ({why})", file=sys.stderr)
            return 1
        return 0


def key_of(value: bytes, key_field: str) -> bytes | None:
    """The Kafka key the worker expects: str(value of the partition key) in UTF-8; None when unreadable."""
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    key = event.get(key_field)
    if key is None or isinstance(key, (dict, list)):
        return None
    return str(key).encode()


def read_rows(path: str, kinds: dict[str, str]) -> Iterator[bytes]:
    """Each row of a file as the bytes of one event."""
    if path == "-":
        yield from _json_lines(sys.stdin.buffer)
        return
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                yield orjson.dumps({k: _typed(v, kinds.get(k)) for k, v in row.items()})
    elif suffix == ".parquet":
        yield from _parquet(path)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        with open(path, "rb") as f:
            yield from _json_lines(f)
    else:
        msg = f"cannot read {path}: give a .jsonl, .ndjson, .json (one object per line), .csv or .parquet file"
        raise SystemExit(f"sluice send: {msg}")


def _json_lines(stream) -> Iterator[bytes]:
    for line in stream:
        line = line.strip()
        if line:
            yield line


def _typed(text: str, kind: str | None):
    """A CSV cell in its declared type; text that does not read as that type stays text (the worker judges it)."""
    if text == "":
        return None
    try:
        if kind == "double":
            return float(text)
        if kind == "long":
            return int(text)
        if kind == "bool":
            return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
    except (ValueError, KeyError):
        return text
    return text


def _parquet(path: str) -> Iterator[bytes]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            yield orjson.dumps({k: _json_value(v) for k, v in row.items()})


def _json_value(value):
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value
