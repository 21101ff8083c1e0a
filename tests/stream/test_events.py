"""Validation: every malformed event comes back with a reason, valid ones pass."""

from __future__ import annotations

import orjson
import pytest

from features.spec import EventSchema
from stream.events import EventValidator, iso_ms, parse_timestamp_ms

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
    ],
)
def test_bad_events_are_rejected_with_a_reason(raw, reason):
    parsed = EventValidator(SCHEMA, ("card",)).parse([orjson.dumps(GOOD), raw, orjson.dumps(GOOD)], [0, 1, 2])
    assert parsed.index.tolist() == [0, 2]
    assert len(parsed.rejects) == 1
    assert parsed.rejects[0][0] == 1
    assert reason in parsed.rejects[0][1]


def test_valid_events_become_columns():
    parsed = EventValidator(SCHEMA, ("card",)).parse([orjson.dumps(GOOD)], [41])
    assert parsed.columns.ts.tolist() == [parse_timestamp_ms("2026-11-01T10:00:00.250Z")]
    assert parsed.columns.seq.tolist() == [41]
    assert parsed.columns.fields["amount"].tolist() == [12.5]


def test_timestamps_round_trip_to_the_millisecond():
    for text in ("2026-11-01T10:00:00.250Z", "1999-12-31T23:59:59.999Z", "2026-01-01T00:00:00.000Z"):
        assert iso_ms(parse_timestamp_ms(text)) == text
    assert parse_timestamp_ms("2026-11-01T11:00:00.250+01:00") == parse_timestamp_ms("2026-11-01T10:00:00.250Z")
    assert parse_timestamp_ms(1_700_000_000_123) == 1_700_000_000_123
