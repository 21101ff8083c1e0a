"""Card-fraud demo feature repository.

Every windowed feature is declared here once. Sluice compiles these
declarations into both the streaming aggregator (Faust worker) and the
offline computation used for training, so the two cannot drift apart.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, KafkaSource
from feast.aggregation import Aggregation
from feast.data_format import JsonFormat
from feast.stream_feature_view import StreamFeatureView
from feast.types import Float64, Int64, String

card = Entity(name="card", join_keys=["card_id"], description="A payment card.")
merchant = Entity(name="merchant", join_keys=["merchant_id"], description="A merchant.")

card_profiles_source = FileSource(
    name="card_profiles",
    path="data/cards.parquet",
    timestamp_field="event_timestamp",
)

card_profile = FeatureView(
    name="card_profile",
    entities=[card],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="account_age_days", dtype=Int64),
        Field(name="credit_limit", dtype=Float64),
        Field(name="home_country", dtype=String),
        Field(name="is_premium", dtype=Int64),
    ],
    source=card_profiles_source,
    online=True,
)

transactions_history = FileSource(
    name="transactions_history",
    path="data/transactions.parquet",
    timestamp_field="event_time",
)

transactions = KafkaSource(
    name="transactions",
    kafka_bootstrap_servers="localhost:9092",
    topic="transactions",
    timestamp_field="event_time",
    batch_source=transactions_history,
    message_format=JsonFormat(
        schema_json=(
            "transaction_id string, card_id string, merchant_id string, amount double, "
            "currency string, country string, channel string, event_time timestamp"
        )
    ),
    # Allowed lateness: an event more than this behind its partition's stream
    # time is recorded in the late topic instead of being scored.
    watermark_delay_threshold=timedelta(minutes=5),
)

_5M, _1H, _24H = timedelta(minutes=5), timedelta(hours=1), timedelta(hours=24)

card_txn = StreamFeatureView(
    name="card_txn",
    entities=[card],
    source=transactions,
    timestamp_field="event_time",
    mode="python",
    ttl=_24H,
    aggregations=[
        Aggregation(column="amount", function="count", time_window=_5M, name="txn_count_5m"),
        Aggregation(column="amount", function="sum", time_window=_5M, name="amount_sum_5m"),
        Aggregation(column="amount", function="max", time_window=_5M, name="amount_max_5m"),
        Aggregation(column="amount", function="count", time_window=_1H, name="txn_count_1h"),
        Aggregation(column="amount", function="sum", time_window=_1H, name="amount_sum_1h"),
        Aggregation(column="amount", function="mean", time_window=_1H, name="amount_mean_1h"),
        Aggregation(column="amount", function="max", time_window=_1H, name="amount_max_1h"),
        Aggregation(column="country", function="count_distinct", time_window=_1H, name="country_distinct_1h"),
        Aggregation(column="amount", function="count", time_window=_24H, name="txn_count_24h"),
        Aggregation(column="amount", function="sum", time_window=_24H, name="amount_sum_24h"),
        Aggregation(column="amount", function="mean", time_window=_24H, name="amount_mean_24h"),
        Aggregation(column="amount", function="max", time_window=_24H, name="amount_max_24h"),
        Aggregation(column="amount", function="std", time_window=_24H, name="amount_std_24h"),
    ],
    schema=[
        Field(name="card_id", dtype=String),
        Field(name="txn_count_5m", dtype=Int64),
        Field(name="amount_sum_5m", dtype=Float64),
        Field(name="amount_max_5m", dtype=Float64),
        Field(name="txn_count_1h", dtype=Int64),
        Field(name="amount_sum_1h", dtype=Float64),
        Field(name="amount_mean_1h", dtype=Float64),
        Field(name="amount_max_1h", dtype=Float64),
        Field(name="country_distinct_1h", dtype=Int64),
        Field(name="txn_count_24h", dtype=Int64),
        Field(name="amount_sum_24h", dtype=Float64),
        Field(name="amount_mean_24h", dtype=Float64),
        Field(name="amount_max_24h", dtype=Float64),
        Field(name="amount_std_24h", dtype=Float64),
    ],
)

merchant_txn = StreamFeatureView(
    name="merchant_txn",
    entities=[merchant],
    source=transactions,
    timestamp_field="event_time",
    mode="python",
    ttl=_1H,
    aggregations=[
        Aggregation(column="amount", function="count", time_window=_1H, name="merchant_txn_count_1h"),
    ],
    schema=[
        Field(name="merchant_id", dtype=String),
        Field(name="merchant_txn_count_1h", dtype=Int64),
    ],
)

card_merchant_txn = StreamFeatureView(
    name="card_merchant_txn",
    entities=[card, merchant],
    source=transactions,
    timestamp_field="event_time",
    mode="python",
    ttl=_24H * 30,
    aggregations=[
        # Hopping: 30-day window advancing once a day, kept as 30 daily tiles.
        Aggregation(
            column="amount",
            function="count",
            time_window=_24H * 30,
            slide_interval=_24H,
            name="card_merchant_count_30d",
        ),
    ],
    schema=[
        Field(name="card_id", dtype=String),
        Field(name="merchant_id", dtype=String),
        Field(name="card_merchant_count_30d", dtype=Int64),
    ],
)

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[
        card_txn,
        merchant_txn,
        card_merchant_txn,
        card_profile[["account_age_days", "credit_limit", "is_premium"]],
    ],
    tags={
        # Field that identifies an event; it keys the prediction topic.
        "sluice.event_id": "transaction_id",
        # Where `sluice train` finds labels (event id, label, label_time).
        "sluice.labels_path": "data/labels.parquet",
        "sluice.label_column": "is_fraud",
        # The labels topic's records: {transaction_id, is_fraud, label_time}; the label join (SLUICE_LABEL_JOIN)
        # closes a prediction's label window after 7 days with label 0 (no chargeback: legitimate), keeps it
        # 40 days more for late chargebacks and corrections, and lets a label wait 40 days for its prediction.
        "sluice.label_time_field": "label_time",
        "sluice.label_window": "7d",
        "sluice.label_default": "0",
        "sluice.label_grace": "40d",
    },
)
