"""`sluice init DIR`: a small, working Feast repo to start from.

One events stream (purchases keyed by user), one stream view with windows,
one batch view (user profiles), a FeatureService carrying the tags Sluice
reads, and seeded sample data: a week of history, its labels, the profiles,
and a file of later events for `sluice send`. The label depends on the
windowed features, so the trained model has something to learn.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson

STORE_YAML = """project: {project}
registry: data/registry.db
provider: local
online_store:
  type: sqlite
  path: data/online_store.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""

DEFINITIONS = '''"""Feature definitions: each windowed feature is declared here once.

Sluice computes the stream views online (a worker on the purchases topic) and
offline (training data, backfills) from these same declarations.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, KafkaSource
from feast.aggregation import Aggregation
from feast.data_format import JsonFormat
from feast.stream_feature_view import StreamFeatureView
from feast.types import Float64, Int64, String

user = Entity(name="user", join_keys=["user_id"], description="A customer.")

profiles = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(days=3650),
    schema=[Field(name="account_age_days", dtype=Int64), Field(name="tier", dtype=Int64)],
    source=FileSource(name="user_profiles", path="data/users.parquet", timestamp_field="event_timestamp"),
    online=True,
)

purchases = KafkaSource(
    name="purchases",
    kafka_bootstrap_servers="localhost:9092",
    topic="{topic}",
    timestamp_field="event_time",
    batch_source=FileSource(name="purchase_history", path="data/purchases.parquet", timestamp_field="event_time"),
    message_format=JsonFormat(schema_json="event_id string, user_id string, amount double, category string, event_time timestamp"),
    # Allowed lateness: an event further behind its partition's stream time goes to the late topic.
    watermark_delay_threshold=timedelta(minutes=5),
)

user_activity = StreamFeatureView(
    name="user_activity",
    entities=[user],
    source=purchases,
    timestamp_field="event_time",
    mode="python",
    ttl=timedelta(days=1),
    aggregations=[
        Aggregation(column="amount", function="count", time_window=timedelta(hours=1), name="purchases_1h"),
        Aggregation(column="amount", function="sum", time_window=timedelta(hours=1), name="amount_1h"),
        Aggregation(column="amount", function="mean", time_window=timedelta(days=1), name="amount_mean_24h"),
        Aggregation(column="category", function="count_distinct", time_window=timedelta(days=1), name="categories_24h"),
    ],
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="purchases_1h", dtype=Int64),
        Field(name="amount_1h", dtype=Float64),
        Field(name="amount_mean_24h", dtype=Float64),
        Field(name="categories_24h", dtype=Int64),
    ],
)

model = FeatureService(
    name="{service}",
    features=[user_activity, profiles],
    tags={
        "sluice.event_id": "event_id",
        "sluice.partition_key": "user_id",
        "sluice.labels_path": "data/labels.parquet",
        "sluice.label_column": "label",
        "sluice.label_time_field": "label_time",
        "sluice.label_window": "1d",
        "sluice.label_default": "0",
        "sluice.label_grace": "7d",
    },
)
'''

NEXT_STEPS = """# {project}

A Feast repository made by `sluice init`. Next steps, from the directory above this one:

    cd {name} && feast apply && cd ..
    sluice materialize --repo {name} 2000-01-01 2100-01-01
    sluice train --repo {name}
    sluice broker --port 9092 &
    sluice worker --repo {name} --bootstrap-servers 127.0.0.1:9092 &
    sluice send {name}/data/live.jsonl --repo {name} --bootstrap-servers 127.0.0.1:9092 --rate 200

Edit `feature_definitions.py` to declare your own windows; replace the files in `data/`
with your history (`purchases.parquet`), labels (`labels.parquet`: event_id,
label, label_time) and profiles (`users.parquet`).
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "init",
        help="write a small, working Feast repo to start from (stream view, batch view, FeatureService, sample data)",
        description=(
            "Write a Feast repository with one events stream, one windowed stream view, one batch view and a "
            "FeatureService tagged for Sluice, plus seeded sample data: a week of history with labels, user profiles, "
            "and later events to send. Then: feast apply, sluice materialize, sluice train, sluice worker, sluice send."
        ),
    )
    p.add_argument("directory", help="where to write the repo (must not exist or be empty)")
    p.add_argument("--topic", default="purchases", help="the events topic (default purchases)")
    p.add_argument("--users", type=int, default=300, help="users in the sample data (default 300)")
    p.add_argument("--days", type=float, default=7.0, help="days of sample history (default 7)")
    p.add_argument("--seed", type=int, default=7, help="seed of the sample data (default 7)")
    p.set_defaults(func=run, parser=p)


def run(args) -> int:
    target = Path(args.directory)
    if target.exists() and any(target.iterdir()):
        args.parser.error(f"{target} exists and is not empty; give a new directory")
    write_repo(target, topic=args.topic, users=args.users, days=args.days, seed=args.seed)
    print(f"wrote a Feast repo to {target}; next: cd {target} && feast apply   (then see {target}/README.md)")
    return 0


def write_repo(target: Path, *, topic: str = "purchases", users: int = 300, days: float = 7.0, seed: int = 7, end: datetime | None = None) -> Path:
    """Write definitions and sample data; returns the repo path (not applied yet)."""
    project = re.sub(r"[^a-z0-9_]", "_", target.resolve().name.lower()).strip("_") or "sluice_repo"
    if not project[0].isalpha():
        project = f"repo_{project}"
    data = target / "data"
    data.mkdir(parents=True, exist_ok=True)
    (target / "feature_store.yaml").write_text(STORE_YAML.format(project=project))
    (target / "feature_definitions.py").write_text(DEFINITIONS.replace("{topic}", topic).replace("{service}", f"{project}_model"))
    (target / "README.md").write_text(NEXT_STEPS.format(project=project, name=target.name))
    # History up to an hour ago, live events in the last hour: sent now, none is ahead of its Kafka timestamp.
    end = end or datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    history, live, labels, profiles = sample_data(users, days, seed, end)
    _write_parquet(history, data / "purchases.parquet")
    _write_parquet(labels, data / "labels.parquet")
    _write_parquet(profiles, data / "users.parquet")
    with open(data / "live.jsonl", "wb") as f:
        for row in live:
            f.write(orjson.dumps(row) + b"\n")
    return target


def sample_data(users: int, days: float, seed: int, end: datetime):
    """History (before `end`), live events (the hour after it), labels, and profiles."""
    rng = np.random.default_rng(seed)
    start = end - timedelta(days=days)
    rates = rng.gamma(2.0, 2.0, users)  # purchases per user per day
    risky = rng.random(users) < 0.1
    categories = np.array(["food", "travel", "games", "books", "tools"])
    rows = []
    span_s = (end - start).total_seconds() + 3600
    for u in range(users):
        n = rng.poisson(rates[u] * span_s / 86400) + 1
        times = np.sort(rng.uniform(0, span_s, n))
        # A risky user buys in bursts of larger amounts: that is what the label follows.
        if risky[u]:
            times = np.sort(np.concatenate([times, times[: n // 2] + rng.uniform(1, 600, n // 2)]))
        for t in times:
            amount = float(round(rng.lognormal(3.0 + (0.8 if risky[u] else 0.0), 0.7), 2))
            rows.append((start + timedelta(seconds=float(t)), f"user-{u:05d}", amount, str(rng.choice(categories)), bool(risky[u])))
    rows.sort(key=lambda r: r[0])
    history, live, labels = [], [], []
    for i, (when, user, amount, category, risk) in enumerate(rows):
        event = {"event_id": f"e-{i:08d}", "user_id": user, "amount": amount, "category": category, "event_time": when}
        if when < end:
            history.append(event)
            label = int(rng.random() < ((0.6 if amount > 30 else 0.1) if risk else 0.005))
            labels.append({"event_id": event["event_id"], "label": label, "label_time": when + timedelta(hours=1 if label else 24)})
        else:
            live.append({**event, "event_time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z")})
    profiles = [
        {"user_id": f"user-{u:05d}", "account_age_days": int(rng.integers(1, 2000)), "tier": int(rng.integers(0, 3)), "event_timestamp": start}
        for u in range(users)
    ]
    return history, live, labels, profiles


def _write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    # Feast reads parquet schemas as JSON types: plain `string`, never `large_string`; times in UTC.
    fields = []
    for f in table.schema:
        kind = f.type
        if pa.types.is_large_string(kind):
            kind = pa.string()
        elif pa.types.is_timestamp(kind):
            kind = pa.timestamp("us", tz="UTC")
        fields.append(pa.field(f.name, kind))
    pq.write_table(table.cast(pa.schema(fields)), path)
