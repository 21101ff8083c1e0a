"""The card-fraud demo generator: shapes, behaviour, labels and the event stream."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraud_demo.arrivals import event_stream, to_event
from fraud_demo.generator import TRANSACTION_COLUMNS, DemoConfig, generate_transactions, make_world, write_repo_data

START = datetime(2026, 11, 1, tzinfo=UTC)
END = START + timedelta(days=4)
DRIFT = START + timedelta(days=2)
CFG = DemoConfig(seed=11, n_cards=1000, n_merchants=400, fraud_card_fraction=0.05, drift_at=DRIFT)
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
CARD_DTYPES = {
    "card_id": "object",
    "account_age_days": "int64",
    "credit_limit": "float64",
    "home_country": "object",
    "is_premium": "int64",
    "event_timestamp": "datetime64[ns, UTC]",
}
TXN_DTYPES = {
    "transaction_id": "object",
    "card_id": "object",
    "merchant_id": "object",
    "amount": "float64",
    "currency": "object",
    "country": "object",
    "channel": "object",
    "event_time": "datetime64[ns, UTC]",
}
LABEL_DTYPES = {"transaction_id": "object", "is_fraud": "int64", "label_time": "datetime64[ns, UTC]"}


@pytest.fixture(scope="module")
def world():
    return make_world(CFG)


@pytest.fixture(scope="module")
def data(world):
    return generate_transactions(world, CFG, START, END)


@pytest.fixture(scope="module")
def joined(world, data):
    """Transactions with their label and the card's home country."""
    transactions, labels = data
    frame = transactions.merge(labels, on="transaction_id").merge(
        world.cards[["card_id", "home_country"]], on="card_id"
    )
    frame["foreign"] = frame["country"] != frame["home_country"]
    return frame


def dtypes(frame: pd.DataFrame) -> dict[str, str]:
    return {name: str(dtype) for name, dtype in frame.dtypes.items()}


def same_card_gaps_s(frame: pd.DataFrame) -> pd.Series:
    ordered = frame.sort_values("event_time", kind="stable")
    return ordered.groupby("card_id")["event_time"].diff().dropna().dt.total_seconds()


# --- determinism and schemas -------------------------------------------------


def test_same_seed_gives_identical_frames(world, data):
    pd.testing.assert_frame_equal(make_world(CFG).cards, world.cards)
    pd.testing.assert_frame_equal(make_world(CFG).merchants, world.merchants)
    again = generate_transactions(make_world(CFG), CFG, START, END)
    pd.testing.assert_frame_equal(again[0], data[0])
    pd.testing.assert_frame_equal(again[1], data[1])


def test_other_seed_or_period_gives_other_traffic(world, data):
    other_seed = generate_transactions(world, replace(CFG, seed=12), START, END)[0]
    assert not other_seed["card_id"].equals(data[0]["card_id"])
    later = generate_transactions(world, CFG, END, END + timedelta(days=4))[0]
    shifted = later["event_time"] - timedelta(days=4)
    assert not shifted.reset_index(drop=True).equals(data[0]["event_time"].reset_index(drop=True))


def test_world_schema(world):
    cards, merchants = world.cards, world.merchants
    assert dtypes(cards) == CARD_DTYPES
    assert list(merchants.columns) == ["merchant_id", "category", "country"]
    assert len(cards) == CFG.n_cards and len(merchants) == CFG.n_merchants
    assert cards["card_id"].str.fullmatch(r"card-\d{6}").all() and cards["card_id"].is_unique
    assert merchants["merchant_id"].str.fullmatch(r"m-\d{5}").all() and merchants["merchant_id"].is_unique
    assert (cards["event_timestamp"] < pd.Timestamp(START)).all()
    assert set(cards["home_country"]) == {"US", "GB", "DE", "FR", "CA"}
    assert (cards["home_country"] == "US").mean() > 0.6
    assert (cards["credit_limit"] > 0).all() and set(cards["is_premium"]) == {0, 1}
    assert {"grocery", "electronics", "travel", "online_retail", "gaming"} <= set(merchants["category"])


def test_transaction_schema_ids_and_order(data):
    transactions, labels = data
    assert dtypes(transactions) == TXN_DTYPES
    assert dtypes(labels) == LABEL_DTYPES
    assert transactions["transaction_id"].is_unique
    assert transactions["transaction_id"].str.fullmatch(r"t\d{9}").all()
    assert transactions["event_time"].is_monotonic_increasing
    assert transactions["event_time"].min() >= pd.Timestamp(START)
    assert transactions["event_time"].max() < pd.Timestamp(END)
    assert (transactions["event_time"].astype("int64") % 1_000_000 == 0).all()  # whole milliseconds
    cents = transactions["amount"] * 100
    assert np.allclose(cents, cents.round()) and (transactions["amount"] > 0).all()
    assert set(transactions["channel"]) == {"pos", "web", "app"}
    assert transactions.groupby("country")["currency"].nunique().max() == 1
    assert all(isinstance(v, str) for v in transactions["card_id"].head(100))


def test_id_prefix(world):
    transactions, labels = generate_transactions(world, CFG, START, START + timedelta(hours=2), id_prefix="live-")
    assert transactions["transaction_id"].str.fullmatch(r"live-\d{9}").all()
    assert labels["transaction_id"].tolist() == transactions["transaction_id"].tolist()


def test_naive_datetimes_are_rejected(world):
    with pytest.raises(ValueError, match="naive"):
        generate_transactions(world, CFG, datetime(2026, 11, 1), END)


def test_volume_matches_rates(joined):
    legit = joined[joined["is_fraud"] == 0]
    expected = CFG.n_cards * CFG.txns_per_card_per_day * 4
    assert abs(len(legit) - expected) < 0.03 * expected
    victims = joined.loc[joined["is_fraud"] == 1, "card_id"]
    assert victims.nunique() == round(CFG.fraud_card_fraction * CFG.n_cards)
    assert victims.value_counts().between(3, 15).all()  # one burst per compromised card


def test_legit_traffic_follows_a_daily_cycle_at_home(joined):
    legit = joined[joined["is_fraud"] == 0]
    by_hour = legit["event_time"].dt.hour.value_counts()
    assert by_hour[15] > 3 * by_hour[3]
    assert not legit["foreign"].any()
    assert (legit["channel"] == "pos").mean() > 0.6
    # Habits: most of a card's purchases are at a few merchants.
    top = legit.groupby("card_id")["merchant_id"].agg(lambda m: m.value_counts().iloc[:3].sum() / len(m))
    assert top.median() > 0.6


# --- fraud ---------------------------------------------------------------------


def test_fraud_is_burstier_than_legit(joined):
    fraud = joined[(joined["is_fraud"] == 1) & (joined["event_time"] < pd.Timestamp(DRIFT))]
    legit = joined[joined["is_fraud"] == 0]
    assert len(fraud) > 50
    assert same_card_gaps_s(fraud).median() < same_card_gaps_s(legit).median() / 20
    assert same_card_gaps_s(fraud).max() <= 240


def test_fraud_before_drift_is_foreign_online_and_large(joined):
    fraud = joined[(joined["is_fraud"] == 1) & (joined["event_time"] < pd.Timestamp(DRIFT))]
    legit = joined[joined["is_fraud"] == 0]
    assert fraud["foreign"].mean() > 0.7
    assert fraud["channel"].isin(["web", "app"]).mean() > 0.7
    assert fraud["amount"].median() > 2 * legit["amount"].median()


def test_fraud_after_drift_is_domestic_small_and_slow(joined):
    # Bursts last under an hour, so an hour after the drift only new-style episodes remain.
    fraud = joined[(joined["is_fraud"] == 1) & (joined["event_time"] >= pd.Timestamp(DRIFT) + pd.Timedelta(hours=1))]
    assert len(fraud) > 50
    assert not fraud["foreign"].any()
    assert fraud["amount"].between(1, 20).all()
    assert set(fraud["channel"]) <= {"pos", "app"}
    assert same_card_gaps_s(fraud).min() >= 5 * 60


def test_no_drift_means_old_style_fraud_throughout(world):
    transactions, labels = generate_transactions(world, replace(CFG, drift_at=None), START, END)
    fraud = transactions[labels["is_fraud"].to_numpy() == 1]
    late = fraud[fraud["event_time"] >= pd.Timestamp(DRIFT)]
    assert len(late) > 50 and late["amount"].median() > 20


def test_fraud_happens_at_merchants_new_to_the_card(joined):
    legit = joined[joined["is_fraud"] == 0]
    fraud = joined[joined["is_fraud"] == 1]
    used = set(zip(legit["card_id"], legit["merchant_id"]))
    reused = sum(pair in used for pair in zip(fraud["card_id"], fraud["merchant_id"]))
    assert reused / len(fraud) < 0.02  # only where a country has no other risky merchant


def test_legit_traffic_unchanged_by_fraud_settings(world, data):
    more_fraud = replace(CFG, drift_at=None, fraud_card_fraction=0.1)
    transactions, labels = generate_transactions(world, more_fraud, START, END)
    legit_here = transactions[labels["is_fraud"].to_numpy() == 0].drop(columns="transaction_id")
    legit_base = data[0][data[1]["is_fraud"].to_numpy() == 0].drop(columns="transaction_id")
    pd.testing.assert_frame_equal(legit_here.reset_index(drop=True), legit_base.reset_index(drop=True))


# --- labels --------------------------------------------------------------------


def test_every_transaction_has_one_label(data):
    transactions, labels = data
    assert labels["transaction_id"].is_unique
    assert set(labels["transaction_id"]) == set(transactions["transaction_id"])
    assert set(labels["is_fraud"]) == {0, 1}


def test_label_times(joined):
    assert (joined["label_time"] >= joined["event_time"]).all()
    legit = joined[joined["is_fraud"] == 0]
    assert (legit["label_time"] - legit["event_time"] == CFG.legit_label_delay).all()
    delay = (joined.loc[joined["is_fraud"] == 1, "label_time"] - joined.loc[joined["is_fraud"] == 1, "event_time"])
    assert delay.min() >= pd.Timedelta(minutes=10) and delay.max() <= pd.Timedelta(days=45)
    assert pd.Timedelta(days=1) < delay.median() < pd.Timedelta(days=4)


def test_legit_label_delay_comes_from_config(world):
    cfg = replace(CFG, legit_label_delay=timedelta(days=3, minutes=1))
    transactions, labels = generate_transactions(world, cfg, START, START + timedelta(hours=6))
    legit = labels["is_fraud"].to_numpy() == 0
    delay = labels["label_time"][legit] - transactions["event_time"][legit]
    assert (delay == timedelta(days=3, minutes=1)).all()


# --- events --------------------------------------------------------------------


def test_to_event_format(data):
    row = data[0].iloc[7]
    event = to_event(row)
    assert list(event) == list(TRANSACTION_COLUMNS)
    assert ISO_MS.match(event["event_time"])
    assert datetime.fromisoformat(event["event_time"]) == row["event_time"]
    assert isinstance(event["amount"], float) and event["amount"] == row["amount"]
    json.dumps(event)  # JSON-ready as is


def test_to_event_converts_other_zones_to_utc():
    row = dict(transaction_id="x", card_id="c", merchant_id="m", amount=1, currency="EUR", country="DE",
               channel="pos", event_time=datetime(2026, 11, 22, 8, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1))))
    assert to_event(row)["event_time"] == "2026-11-22T07:00:00.123Z"


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=4_102_444_800_000))  # 1970 .. 2100
def test_to_event_time_round_trips(ms):
    when = pd.Timestamp(ms, unit="ms", tz="UTC")
    row = dict(transaction_id="x", card_id="c", merchant_id="m", amount=2.5, currency="USD", country="US",
               channel="web", event_time=when)
    text = to_event(row)["event_time"]
    assert ISO_MS.match(text) and datetime.fromisoformat(text) == when


def test_stream_in_order_without_disorder(data):
    transactions = data[0].iloc[:500]
    events = [json.loads(m) for m in event_stream(transactions)]
    assert events == [to_event(row) for _, row in transactions.iterrows()]


def event_times_ms(events: list[dict]) -> np.ndarray:
    return np.array([int(pd.Timestamp(e["event_time"]).value // 1_000_000) for e in events])


@pytest.mark.parametrize("disorder_ms", [2_000, 30_000, 600_000])
def test_stream_disorder_is_bounded(data, disorder_ms):
    transactions = data[0].iloc[:3000]
    events = [json.loads(m) for m in event_stream(transactions, disorder_ms=disorder_ms, seed=3)]
    times = event_times_ms(events)
    behind = np.maximum.accumulate(times) - times  # how far each arrival is behind the newest seen
    assert behind.max() <= disorder_ms
    assert behind.max() > 0  # it really is out of order
    # Same events, event_time untouched.
    expected = sorted((to_event(row) for _, row in transactions.iterrows()), key=lambda e: e["transaction_id"])
    assert sorted(events, key=lambda e: e["transaction_id"]) == expected


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=600_000), st.integers(min_value=0, max_value=2**32))
def test_stream_disorder_bound_property(data, disorder_ms, seed):
    transactions = data[0].iloc[:400]
    times = event_times_ms([json.loads(m) for m in event_stream(transactions, disorder_ms=disorder_ms, seed=seed)])
    assert len(times) == len(transactions)
    assert (np.maximum.accumulate(times) - times).max() <= disorder_ms


def classify(message: bytes) -> str:
    """'good' for a well-formed event, else what is wrong with it (and check it is marked bad)."""
    try:
        event = json.loads(message)
    except ValueError:
        return "not_json"
    assert event["transaction_id"].startswith("bad-") == (
        set(event) != set(TRANSACTION_COLUMNS)
        or not isinstance(event["amount"], float)
        or not ISO_MS.match(event["event_time"])
    )
    if set(event) != set(TRANSACTION_COLUMNS):
        return "missing_field"
    if not isinstance(event["amount"], float):
        return "wrong_type"
    if not ISO_MS.match(event["event_time"]):
        return "bad_time"
    assert all(isinstance(event[c], str) for c in TRANSACTION_COLUMNS if c != "amount")
    return "good"


def test_stream_bad_messages_are_extra_and_marked(data):
    transactions = data[0].iloc[:4000]
    messages = list(event_stream(transactions, disorder_ms=1000, bad_fraction=0.05, seed=5))
    kinds = pd.Series([classify(m) for m in messages]).value_counts()
    assert kinds["good"] == len(transactions)  # none replaced
    assert len(messages) - len(transactions) == round(0.05 * len(transactions))
    assert {"not_json", "missing_field", "wrong_type", "bad_time"} <= set(kinds.index)
    # Interleaved, not bunched at one end.
    bad_positions = [i for i, m in enumerate(messages) if classify(m) != "good"]
    assert bad_positions[0] < len(messages) / 4 and bad_positions[-1] > 3 * len(messages) / 4


def test_stream_is_deterministic(data):
    transactions = data[0].iloc[:300]
    run = lambda: list(event_stream(transactions, disorder_ms=2000, bad_fraction=0.1, seed=9))  # noqa: E731
    assert run() == run()


# --- files -----------------------------------------------------------------------


def test_write_repo_data(tmp_path, world, data):
    transactions, labels = data
    write_repo_data(tmp_path / "repo", world, transactions, labels)
    folder = tmp_path / "repo" / "data"
    expected = {"cards": world.cards, "merchants": world.merchants, "transactions": transactions, "labels": labels}
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.parquet" for n in expected)
    for name, frame in expected.items():
        back = pd.read_parquet(folder / f"{name}.parquet")
        assert list(back.columns) == list(frame.columns)
        pd.testing.assert_frame_equal(back, frame.reset_index(drop=True), check_dtype=False)
    assert dtypes(pd.read_parquet(folder / "cards.parquet"))["event_timestamp"] == "datetime64[ns, UTC]"
    assert dtypes(pd.read_parquet(folder / "transactions.parquet"))["event_time"] == "datetime64[ns, UTC]"
