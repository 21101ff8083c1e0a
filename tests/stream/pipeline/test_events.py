"""Validation: every malformed event comes back with a reason and a kind, valid ones pass."""

from __future__ import annotations

import orjson
import pytest

from features.spec import EventSchema
from stream.pipeline.events import MAX_TIME_MS, MIN_TIME_MS, REASON_KINDS, EventValidator, iso_ms, parse_timestamp_ms

SCHEMA = EventSchema(
    fields=(("id", "string"), ("card", "string"), ("amount", "double"), ("n", "long"), ("t", "timestamp")),
    event_id="id",
    timestamp_field="t",
    topic="events",
    allowed_lateness_ms=0,
)
GOOD = {"id": "e1", "card": "c1", "amount": 12.5, "n": 3, "t": "2026-11-01T10:00:00.250Z"}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "amount"}), "missing field 'amount'"),
        (orjson.dumps(dict(GOOD, amount="abc")), "field 'amount' must be a number"),
        (orjson.dumps(dict(GOOD, amount=True)), "field 'amount' must be a number"),
        (orjson.dumps(dict(GOOD, n=1.5)), "field 'n' must be an integer"),
        (orjson.dumps(dict(GOOD, t="2026-11-01T10:00:00")), "has no timezone"),
        (orjson.dumps(dict(GOOD, t="noon")), "field 't'"),
        (orjson.dumps(dict(GOOD, card="")), "key field 'card'"),
        (orjson.dumps(dict(GOOD, card="a\x1fb")), "key field 'card'"),
        (b"\xff\xfe", "not valid JSON"),
        (orjson.dumps(dict(GOOD, amount=None)), "field 'amount' is null"),
        (orjson.dumps(dict(GOOD, t=2**63 - 1)), "field 't' is out of range"),
        (orjson.dumps(dict(GOOD, t=2**63)), "field 't' is out of range"),
        (orjson.dumps(dict(GOOD, t=-(2**63))), "field 't' is out of range"),
        (orjson.dumps(dict(GOOD, t=MAX_TIME_MS + 1)), "years 1 to 9999"),
        (orjson.dumps(dict(GOOD, t="0001-01-01T00:00:00+01:00")), "field 't' is out of range"),
        (orjson.dumps(dict(GOOD, t="2026-11-01T10:00:00." + "1" * 100 + "Z")), "field 't' is not ISO-8601"),
        (orjson.dumps(dict(GOOD, amount=1e308)), "field 'amount' is out of range: |1e+308| exceeds 1e+15"),
        (orjson.dumps(dict(GOOD, amount=-1e16)), "SLUICE_MAX_ABS_VALUE"),
        (orjson.dumps(dict(GOOD, n=2**64 - 1)), "field 'n' is out of range"),
        (orjson.dumps(dict(GOOD, n="@")).replace(b'"@"', str(2**70).encode()), "field 'n' is out of range"),
        (orjson.dumps(dict(GOOD, card="k" * 1025)), "key field 'card' is 1,025 bytes long"),
        (orjson.dumps(dict(GOOD, id="é" * 600)), "key field 'id' is 1,200 bytes long"),
        (orjson.dumps(dict(GOOD, extra=[[[1]]])).replace(b"[[[1]]]", b"[" * 1023 + b"]" * 1023), "nested deeper than 1023 levels"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(raw, reason):
    parsed = EventValidator(SCHEMA, ("card",)).parse([orjson.dumps(GOOD), raw, orjson.dumps(GOOD)], [0, 1, 2])
    assert parsed.index.tolist() == [0, 2]
    assert len(parsed.rejects) == 1
    assert parsed.rejects[0][0] == 1
    assert reason in parsed.rejects[0][1]
    assert parsed.rejects[0].kind in REASON_KINDS


@pytest.mark.parametrize(
    ("event", "why"),
    [
        (dict(GOOD, amount=1e15, n=-(10**15)), "numbers up to the limit"),
        (dict(GOOD, amount=-0.0), "minus zero"),
        (dict(GOOD, t=MIN_TIME_MS), "the first millisecond of year 1"),
        (dict(GOOD, t="9999-12-31T23:59:59.999+00:00"), "the last millisecond of 9999 (not ahead: no Kafka time given)"),
        (dict(GOOD, card="k" * 1024, id="é" * 512), "key fields of 1 KiB"),
        (dict(GOOD, extra=[[[1]]]), "extra fields"),
    ],
)
def test_odd_but_valid_events_pass(event, why):
    parsed = EventValidator(SCHEMA, ("card",)).parse([orjson.dumps(event)], [0])
    assert not parsed.rejects, (why, parsed.rejects)


def test_a_deeply_nested_event_within_the_limit_passes():
    raw = orjson.dumps(dict(GOOD, extra=0)).replace(b'"extra":0', b'"extra":' + b"[" * 1022 + b"]" * 1022)
    assert not EventValidator(SCHEMA, ("card",)).parse([raw], [0]).rejects


def test_kafka_keys_must_be_the_partition_key_value():
    validator = EventValidator(SCHEMA, ("card",), partition_key="card")
    raw = orjson.dumps(GOOD)
    parsed = validator.parse([raw] * 4, [0, 1, 2, 3], [b"c1", None, b"c2", b""])
    assert parsed.index.tolist() == [0]
    assert [r.kind for r in parsed.rejects] == ["bad_key"] * 3
    assert parsed.rejects[0].reason == "Kafka key is null; produce with key = str(card)"
    assert parsed.rejects[1].reason.startswith("Kafka key b'c2' is not the event's card b'c1'")
    # Without keys (offline tools), no key check.
    assert not validator.parse([raw], [0]).rejects


def test_messages_over_the_size_limit_are_rejected_unread():
    validator = EventValidator(SCHEMA, ("card",), partition_key="card", max_message_bytes=200)
    small = orjson.dumps(GOOD)
    big = orjson.dumps(dict(GOOD, pad="x" * 200))
    parsed = validator.parse([small, big, b"\xff" * 500, small], [0, 1, 2, 3], [b"c1", b"c1", None, b"c" * 190])
    assert parsed.index.tolist() == [0]
    assert [r.kind for r in parsed.rejects] == ["too_large"] * 3
    assert parsed.rejects[0].reason.startswith(f"too large: the message is {len(big) + 2} bytes, the limit is 200")


def test_event_times_far_ahead_of_the_kafka_timestamp_are_rejected():
    validator = EventValidator(SCHEMA, ("card",), max_event_ahead_ms=60_000)
    ts = parse_timestamp_ms(GOOD["t"])
    raw = orjson.dumps(GOOD)
    parsed = validator.parse([raw] * 4, [0, 1, 2, 3], None, [ts - 60_000, ts - 60_001, ts + 10**9, 0])
    assert parsed.index.tolist() == [0, 2, 3]  # no Kafka timestamp (0): nothing to judge by
    assert parsed.rejects[0].kind == "future_time"
    assert "60,001 ms ahead of the message's Kafka timestamp" in parsed.rejects[0].reason


def test_the_number_limit_is_a_setting():
    raw = orjson.dumps(dict(GOOD, amount=5e6))
    assert EventValidator(SCHEMA, ("card",), max_abs_value=1e6).parse([raw], [0]).rejects[0].kind == "out_of_range"
    assert not EventValidator(SCHEMA, ("card",)).parse([raw], [0]).rejects


def test_valid_events_become_columns():
    parsed = EventValidator(SCHEMA, ("card",)).parse([orjson.dumps(GOOD)], [41])
    assert parsed.columns.ts.tolist() == [parse_timestamp_ms("2026-11-01T10:00:00.250Z")]
    assert parsed.columns.seq.tolist() == [41]
    assert parsed.columns.fields["amount"].tolist() == [12.5]


def test_timestamps_round_trip_to_the_millisecond():
    texts = ("2026-11-01T10:00:00.250Z", "1999-12-31T23:59:59.999Z", "2026-01-01T00:00:00.000Z", "1969-12-31T23:59:59.999Z")
    for text in (*texts, "0001-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z"):
        assert iso_ms(parse_timestamp_ms(text)) == text
    assert parse_timestamp_ms("0001-01-01T00:00:00Z") == MIN_TIME_MS
    assert parse_timestamp_ms("9999-12-31T23:59:59.999Z") == MAX_TIME_MS
    assert parse_timestamp_ms("2026-11-01T11:00:00.250+01:00") == parse_timestamp_ms("2026-11-01T10:00:00.250Z")
    assert parse_timestamp_ms(1_700_000_000_123) == 1_700_000_000_123


# The demo's kinds only (no long field), so that `problems` checks columns rather than every event alone.
COLUMNS_SCHEMA = EventSchema(
    fields=(("id", "string"), ("card", "string"), ("note", "string"), ("amount", "double"), ("t", "timestamp")),
    event_id="id",
    timestamp_field="t",
    topic="events",
    allowed_lateness_ms=0,
)
COLUMNS_GOOD = {"id": "e1", "card": "c1", "note": "", "amount": 12.5, "t": "2026-11-01T10:00:00.250+02:00"}
ODD = [
    {"amount": 3}, {"amount": None}, {"amount": "3"}, {"amount": 1e16}, {"amount": -1e16}, {"amount": float("nan")},
    {"amount": float("inf")}, {"amount": True}, {"card": ""}, {"card": "a\x1fb"}, {"card": "k" * 300},
    {"card": "k" * 1025}, {"card": 7}, {"id": None}, {"note": 1}, {"t": "2026-11-01T10:00:00"}, {"t": "noon"},
    {"t": 1_700_000_000_000}, {"t": MAX_TIME_MS + 1}, {"t": "0001-01-01T00:00:00+01:00"}, {"t": None}, {"t": 1.5},
    {"t": "2026-11-01T10:00:00." + "1" * 100 + "Z"}, {"t": "2026-11-01T10:00:00.123456Z"},
]


@pytest.mark.parametrize("times", [True, False])
@pytest.mark.parametrize("odd", [*ODD, "missing amount", "not a dict"])
def test_problems_column_by_column_are_each_events_problem(odd, times):
    import copy

    validator = EventValidator(COLUMNS_SCHEMA, ("card",), max_abs_value=1e15)
    good = [dict(COLUMNS_GOOD, id=f"e{i}", amount=float(i), t=f"2026-11-01T10:00:0{i}.25{i}Z") for i in range(6)]
    if odd == "missing amount":
        bad = {k: v for k, v in COLUMNS_GOOD.items() if k != "amount"}
    elif odd == "not a dict":
        bad = [1, 2]
    else:
        bad = dict(COLUMNS_GOOD, **odd)
    for batch in (good, [*good[:3], bad, *good[3:]], [bad, bad], [bad]):
        alone = copy.deepcopy(batch)
        expected, stamps = [], []
        for event in alone:
            problem = validator.problem(event, times=times)
            expected.append(None if problem is None else (problem.kind, problem.reason))
            stamps.append(validator.last_ts_ms if times and problem is None else None)
        found, times_read = validator.problems(batch, times=times)
        assert [None if p is None else (p.kind, p.reason) for p in found] == expected
        assert times_read == stamps
        assert orjson.dumps(batch) == orjson.dumps(alone)  # numbers normalised alike
