"""The demo's transactions as a Kafka event stream: JSON events in arrival order, disordered and with malformed ones.

An event arrives at its event time plus a random delay up to `disorder_ms`
(its event time unchanged); a share of malformed messages (truncated JSON,
not UTF-8, a missing field, a text amount, an unreadable time), each a copy
of a good event broken one way, is mixed in at random places.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import orjson
import pandas as pd

from fraud_demo.generator import TRANSACTION_COLUMNS

_dumps = orjson.dumps


def to_event(row: Mapping) -> dict:
    """One transaction as a JSON-ready dict; event_time like "2026-11-22T07:00:00.123Z"."""
    return _event(row.__getitem__, _iso_ms(np.array([_timestamp_ms(row["event_time"])]))[0])


def event_stream(
    transactions: pd.DataFrame, *, disorder_ms: int = 0, bad_fraction: float = 0.0, seed: int = 0
) -> Iterator[bytes]:
    """JSON events in arrival order, optionally out of order and mixed with malformed ones.

    An event arrives at event_time + U[0, disorder_ms] (event_time unchanged),
    so none arrives after one more than disorder_ms younger than itself.
    round(bad_fraction * len(transactions)) malformed messages are added at
    random places; every good event is still there.
    """
    if disorder_ms < 0 or bad_fraction < 0:
        raise ValueError("disorder_ms and bad_fraction must not be negative")
    rng = np.random.default_rng(seed)
    n = len(transactions)
    times = pd.DatetimeIndex(transactions["event_time"])
    if times.tz is None:
        raise ValueError("transactions.event_time must be timezone-aware (UTC)")
    ms = times.as_unit("ns").asi8 // 1_000_000
    order = np.argsort(ms + rng.integers(0, disorder_ms + 1, n), kind="stable")
    cols = {c: transactions[c].to_numpy(dtype=object) for c in TRANSACTION_COLUMNS[:-1]}
    # Bad message b goes just before the good one at arrival position slots[b];
    # each is a copy of a random good event, broken in one of five ways.
    n_bad = int(round(bad_fraction * n)) if n else 0
    slots = np.sort(rng.integers(0, n + 1, n_bad))
    template = rng.integers(0, max(n, 1), n_bad)
    kinds = rng.integers(0, 5, n_bad)
    missing = rng.integers(1, len(TRANSACTION_COLUMNS), n_bad)  # any field but transaction_id
    bad = []
    for b, (t, iso) in enumerate(zip(template, _iso_ms(ms[template]))):
        event = _event(lambda c: cols[c][t], iso)
        event["transaction_id"] = f"bad-{b:06d}"
        bad.append(_malformed(kinds[b], event, TRANSACTION_COLUMNS[missing[b]]))
    return _arrivals(order, ms, cols, slots, bad)


def _arrivals(order, ms, cols, slots, bad) -> Iterator[bytes]:
    b = 0
    for lo in range(0, len(order), 10_000):  # timestamps formatted per chunk: vectorised, still lazy
        idx = order[lo : lo + 10_000]
        for pos, i, iso in zip(range(lo, lo + idx.size), idx, _iso_ms(ms[idx])):
            while b < len(bad) and slots[b] <= pos:
                yield bad[b]
                b += 1
            yield _dumps(_event(lambda c: cols[c][i], iso))
    yield from bad[b:]


def _malformed(kind: int, event: dict, missing: str) -> bytes:
    if kind == 0:  # truncated: not JSON
        text = _dumps(event)
        return text[: len(text) // 2]
    if kind == 1:  # not even UTF-8
        return b"\xff\xfe not json " + event["transaction_id"].encode()
    if kind == 2:
        del event[missing]
    elif kind == 3:
        event["amount"] = "abc"
    else:
        event["event_time"] = "yesterday at noon"
    return _dumps(event)


def _event(get, event_time: str) -> dict:
    """The event dict from a field getter; str/float so any JSON encoder takes it."""
    return {
        "transaction_id": str(get("transaction_id")),
        "card_id": str(get("card_id")),
        "merchant_id": str(get("merchant_id")),
        "amount": float(get("amount")),
        "currency": str(get("currency")),
        "country": str(get("country")),
        "channel": str(get("channel")),
        "event_time": event_time,
    }


def _timestamp_ms(value) -> int:
    ts = pd.Timestamp(value)
    if ts.tz is None:
        raise ValueError(f"event_time {value!r} has no timezone; Sluice events are UTC")
    return ts.value // 1_000_000  # .value is ns since the epoch, whatever the unit


def _iso_ms(ms: np.ndarray) -> np.ndarray:
    # timezone="UTC" makes numpy append the "Z".
    return np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms", timezone="UTC")
