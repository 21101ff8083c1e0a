"""A corpus of hostile messages for any event schema: what producers can get wrong.

`hostile_corpus` derives every message from the schema, the partition key
and one valid template event; it names no field of any use case. Each
message says what Sluice must do with it (`expect`): dead-letter it, score
it, or send it to the late topic. The tests feed it to the engine and to a
real worker; `sluice chaos` mixes it into a live stream.

The template must be an event Sluice scores, and it should be recent in
its partition (`expect == "late"` assumes stream time has reached the
template's time, nothing more).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

from features.spec import EventSchema
from stream.pipeline.events import MAX_KEY_BYTES, parse_timestamp_ms

#: Nesting depth orjson reads (1024) but cannot write (254): an event that
#: carries it must still be scored, since Sluice never re-serializes events.
DEEP = 300


@dataclass(frozen=True)
class HostileMessage:
    kind: str  # what is wrong with it (unique within a corpus)
    key: bytes | None  # Kafka key
    value: bytes | None  # Kafka value; None is a tombstone
    expect: str  # "dlq", "prediction" or "late"
    reason_kind: str | None = None  # for "dlq": the kind of reason (stream.events.REASON_KINDS)


def hostile_corpus(
    schema: EventSchema,
    partition_key: str,
    template: dict,
    *,
    seed: int,
    max_message_bytes: int = 1_000_000,
    max_abs_value: float = 1e15,
) -> list[HostileMessage]:
    """At least 30 kinds of hostile messages, each built from `template` (not changed)."""
    # Over 60 lines on purpose: a catalogue, one entry per kind of bad message, flat
    # and read top to bottom.
    rng = random.Random(seed)
    declared = {n for n, _ in schema.fields}
    id_field, ts_field = schema.event_id, schema.timestamp_field
    numbers = [n for n, k in schema.fields if k in ("double", "long")]
    strings = [n for n, k in schema.fields if k == "string" and n not in (id_field, partition_key)]
    longs = [n for n, k in schema.fields if k == "long"]
    doubles = [n for n, k in schema.fields if k == "double"]
    base_id = str(template[id_field])
    ts_ms = parse_timestamp_ms(template[ts_field])
    out: list[HostileMessage] = []

    def extra(name: str) -> str:
        """A field name the schema does not declare."""
        while name in declared:
            name = f"_{name}"
        return name

    def event(kind: str, **changes) -> dict:
        body = dict(template)
        body[id_field] = f"{base_id}~{kind}"
        body.update(changes)
        return body

    def key_of(body) -> bytes:
        return str(body.get(partition_key, template[partition_key])).encode()

    def add(kind: str, value: bytes | None, expect: str, reason_kind: str | None = None, key=_KEY) -> None:
        out.append(HostileMessage(kind, key_of(template) if key is _KEY else key, value, expect, reason_kind))

    def add_event(kind: str, expect: str, reason_kind: str | None = None, **changes) -> None:
        body = event(kind, **changes)
        out.append(HostileMessage(kind, key_of(body), orjson.dumps(body), expect, reason_kind))

    def with_raw(kind: str, name: str, text: bytes) -> bytes:
        """The event with field `name` written as `text`, verbatim (JSON orjson would never write)."""
        marker = f"\x00raw{rng.random()}"
        return orjson.dumps(event(kind, **{name: marker})).replace(orjson.dumps(marker), text)

    valid = orjson.dumps(event("garbled"))
    # Bytes that are not JSON at all.
    add("invalid_utf8", b"\xff\xfe" + valid[2:], "dlq", "invalid_json")
    add("truncated_json", valid[: len(valid) // 2], "dlq", "invalid_json")
    add("tombstone", None, "dlq", "invalid_json")
    add("empty", b"", "dlq", "invalid_json")
    add("utf8_bom", b"\xef\xbb\xbf" + valid, "dlq", "invalid_json")
    add("too_deep", with_raw("too_deep", extra("deep"), _nested(1100)), "dlq", "invalid_json")
    # JSON, but not an object.
    add("array", b"[" + valid + b"]", "dlq", "not_object")
    add("string", orjson.dumps(valid.decode()), "dlq", "not_object")
    add("number", b"42", "dlq", "not_object")
    add("null", b"null", "dlq", "not_object")
    # Numbers JSON does not have, or Sluice does not take.
    target = numbers[0] if numbers else schema.fields[0][0]
    for kind, text in (("nan_literal", b"NaN"), ("infinity_literal", b"Infinity"), ("minus_infinity", b"-Infinity")):
        add(kind, with_raw(kind, target, text), "dlq", "invalid_json")
    add("lone_surrogate", with_raw("lone_surrogate", (strings or [id_field])[0], b'"\\ud800"'), "dlq", "invalid_json")
    for name in numbers:
        add_event(f"huge_number:{name}", "dlq", "out_of_range", **{name: 1e308})
        add(f"int_2_70:{name}", with_raw(f"int_2_70:{name}", name, str(2**70).encode()), "dlq", "out_of_range")
        add_event(f"over_limit:{name}", "dlq", "out_of_range", **{name: -max_abs_value * 10})
        add_event(f"bool_for_number:{name}", "dlq", "wrong_type", **{name: True})
    for name in longs:
        add_event(f"uint64:{name}", "dlq", "out_of_range", **{name: 2**64 - 1})
        add_event(f"float_for_long:{name}", "dlq", "wrong_type", **{name: 1.5})
    # Every field missing, null, of the wrong type.
    for name, kind in schema.fields:
        body = event(f"missing:{name}")
        del body[name]
        add(f"missing:{name}", orjson.dumps(body), "dlq", "missing_field")
        add_event(f"null:{name}", "dlq", "null_field", **{name: None})
        add_event(f"wrong_type:{name}", "dlq", "wrong_type", **{name: _wrong_value(kind)})
    # Times: no zone, garbage, far outside the calendar, wrong unit, far future.
    add_event("naive_timestamp", "dlq", "wrong_type", **{ts_field: "2026-11-01T10:00:00"})
    add_event("garbage_timestamp", "dlq", "wrong_type", **{ts_field: "yesterday at noon"})
    add_event("timestamp_2_63", "dlq", "out_of_range", **{ts_field: 2**63})
    add_event("timestamp_int64_max", "dlq", "out_of_range", **{ts_field: 2**63 - 1})
    add_event("timestamp_int64_min", "dlq", "out_of_range", **{ts_field: -(2**63)})
    add_event("microseconds_as_ms", "dlq", "out_of_range", **{ts_field: ts_ms * 1000})
    add_event("year_9999", "dlq", "future_time", **{ts_field: "9999-12-31T23:59:59.999Z"})
    add_event("year_1", "late", **{ts_field: "0001-01-01T00:00:00Z"})
    add_event("beyond_lateness", "late", **{ts_field: ts_ms - schema.allowed_lateness_ms - 60_000})
    # Key fields and Kafka keys.
    for name in (partition_key, id_field):
        for kind, value in (("empty_key_field", ""), ("control_chars_key_field", "a\x1fb"), ("newline_key_field", "a\nb"),
                            ("nul_key_field", "a\x00b"), ("long_key_field", "k" * (MAX_KEY_BYTES + 1))):
            add_event(f"{kind}:{name}", "dlq", "bad_key", **{name: value})
    add("null_kafka_key", orjson.dumps(event("null_kafka_key")), "dlq", "bad_key", key=None)
    add("mis_keyed", orjson.dumps(event("mis_keyed")), "dlq", "bad_key", key=key_of(template) + b"-other")
    add("empty_kafka_key", orjson.dumps(event("empty_kafka_key")), "dlq", "bad_key", key=b"")
    # Sizes: over the message limit, as a key field, an extra field, or garbage.
    big = event("huge_key_field", **{partition_key: "k" * max_message_bytes})
    add("huge_key_field", orjson.dumps(big), "dlq", "too_large", key=key_of(big))
    add_event("huge_valid_event", "dlq", "too_large", **{extra("padding"): "x" * (max_message_bytes * 11 // 10)})
    add("huge_garbage", rng.randbytes(5 * max_message_bytes), "dlq", "too_large")
    # Valid, however odd: scored. Repeated event ids are separate messages.
    duplicate = orjson.dumps(event("duplicate_event_id"))
    add("duplicate_event_id", duplicate, "prediction")
    add("duplicate_event_id_again", duplicate, "prediction")
    odd = {extra("extra"): {"nested": [1, "two", None, {"three": 3.0}]}, extra("flag"): True, extra("nothing"): None}
    add_event("extra_fields", "prediction", **odd)
    for kind, depth in (("deeply_nested_extra", DEEP), ("extra_field_deep_1000", 1000)):
        add(kind, with_raw(kind, extra("deep"), _nested(depth - 1)), "prediction")
    add("whitespace_around", b" \n\t" + orjson.dumps(event("whitespace_around")) + b"\r\n ", "prediction")
    if strings:
        add_event("unicode_text", "prediction", **{strings[0]: "Zürich ☃ 日本"})
    if doubles:
        add_event("negative_zero", "prediction", **{doubles[0]: -0.0})
    if numbers:
        name = numbers[0]
        add_event("at_limit", "prediction", **{name: max_abs_value if name in doubles else int(max_abs_value)})
        body = orjson.dumps(event("duplicate_json_keys"))
        # Two values for one field: the last one counts (as in orjson and Python's json).
        add("duplicate_json_keys", body[:-1] + b"," + orjson.dumps({name: template[name]})[1:], "prediction")
        add("duplicate_json_keys_bad_last", body[:-1] + b"," + orjson.dumps({name: "abc"})[1:], "dlq", "wrong_type")
    kinds = [m.kind for m in out]
    assert len(kinds) == len(set(kinds)), "hostile kinds must be unique"
    return out


_KEY = object()


def _wrong_value(kind: str):
    return {"string": 12345, "double": "12.5", "long": "7", "bool": "yes", "timestamp": [2026, 11, 1]}.get(kind, {"x": 1})


def _nested(depth: int) -> bytes:
    """JSON text of arrays nested `depth` deep (orjson cannot write more than 254)."""
    return b"[" * depth + b"0" + b"]" * depth


def spread_corpus(
    schema: EventSchema,
    partition_key: str,
    valid: list[bytes],
    *,
    seed: int,
    pieces: int = 8,
) -> list[tuple[int, HostileMessage]]:
    """The corpus, each kind once, spread over a stream of `valid` payloads where its event time belongs.

    Returns (index in `valid` the message goes before, message), in index
    order. A corpus is made from one template event, and its ordinary-looking
    events carry the template's time. Mixed in anywhere, those made from the
    middle of a stream that spans days of event time (as the demo's live
    events do, sent in minutes) moved their partition's stream time hours
    ahead, and the thousands of on-time events after them were late
    (13,884 in every default `sluice chaos`): a clock fault the corpus does
    not mean to send, and one that hid that partition's stalls. So the
    stream is cut into `pieces`; each kind is taken from the corpus of one
    piece's middle event and goes after that event, before the first later
    one more than half the allowed lateness ahead of it. Events still late
    are the ones the corpus makes late on purpose.
    """
    times = [parse_timestamp_ms(orjson.loads(p)[schema.timestamp_field]) for p in valid]
    rng = random.Random(seed)
    half = schema.allowed_lateness_ms // 2
    places = []
    for piece in range(pieces):
        at = (2 * piece + 1) * len(valid) // (2 * pieces)
        corpus = hostile_corpus(schema, partition_key, orjson.loads(valid[at]), seed=seed)
        end = next((j for j in range(at + 1, len(valid)) if times[j] > times[at] + half), len(valid))
        places.append((at, end, corpus))
    kinds = [m.kind for m in places[0][2]]
    if any([m.kind for m in corpus] != kinds for _, _, corpus in places):
        raise ValueError("the corpus's kinds depend on the template; they must not")
    out = []
    for i in range(len(kinds)):
        at, end, corpus = places[rng.randrange(pieces)]
        out.append((rng.randint(at + 1, end), corpus[i]))
    return sorted(out, key=lambda item: item[0])
