"""Every message gets exactly one outcome from the engine, and none can make it raise.

The engine runs in-process over the demo repo's plan: both stages, dict
state, topics as lists (`Pipeline`). Each test below is one way a single
message used to stop or distort the pipeline.
"""

from __future__ import annotations

import math
import random
import zlib
from datetime import UTC, datetime, timedelta, timezone

import orjson

from stream import metrics
from stream.pipeline.outcomes import HEADER_REASON, HEADER_SOURCE, HEADER_TRUNCATED, Message
from stream.pipeline.events import REASON_KINDS, parse_timestamp_ms
from stream.pipeline.records import read_log, read_prediction
from tests.stream.outcomes import PARTITIONS, assert_copies_carry_the_original, assert_one_outcome_each, check_features, key_of, reasons, start


def test_an_event_time_beyond_any_calendar_is_dead_lettered(trained_repo, make_engine):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=0.5)
    ts = plan.schema.timestamp_field
    for i, payload in enumerate(events):
        if i in (5, 10, 15):
            event = orjson.loads(payload)
            event[ts] = {5: 2**63 - 1, 10: 2**63, 15: -(2**63)}[i]
            payload = orjson.dumps(event)
        pipe.send(key_of(plan, payload), payload, t)
    pipe.run()
    assert_one_outcome_each(pipe)
    dlq = pipe.by_topic("dlq")
    assert len(dlq) == 3
    assert all("is out of range" in r and "years 1 to 9999" in r for r in reasons(dlq))
    assert check_features(pipe, plan) == len(events) - 3


def test_event_times_millennia_apart_among_many_entities_are_computed(trained_repo, make_engine):
    # One event dated year 1, then 15,000 cards at the end of year 9999 (the
    # producer's clock says so too): the window kernel's keys would overflow.
    pipe, plan, events, _ = start(trained_repo, make_engine, hours=0.2)
    template = orjson.loads(events[0])
    schema, pk = plan.schema, plan.partition_key
    end_ms = parse_timestamp_ms("9999-12-31T00:00:00Z")
    first = dict(template, **{schema.timestamp_field: "0001-01-01T00:00:00Z", schema.event_id: "first"})
    pipe.send(str(first[pk]).encode(), orjson.dumps(first), end_ms, partition=0)
    merchant = next(k for k in pipe.engine.entity_fields if k != pk)
    for i in range(15_000):
        event = dict(template, **{pk: f"many-{i}", schema.event_id: f"many-{i}", schema.timestamp_field: end_ms - i})
        event[merchant] = f"m-{i % 500}"
        pipe.send(str(event[pk]).encode(), orjson.dumps(event), end_ms, partition=0)
    pipe.run(chunk_sizes=(20_000, 20_000))  # one chunk: every entity in one kernel call
    outcomes = assert_one_outcome_each(pipe)
    assert all(got[0][0] == "prediction" for got in outcomes.values())
    assert check_features(pipe, plan) == 15_001


def test_a_deeply_nested_extra_field_is_scored_and_logged_as_sent(trained_repo, make_engine):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=0.5)
    nested = events[7][:-1] + b',"extra":' + b"[" * 300 + b"0" + b"]" * 300 + b"}"
    events[7] = nested
    for payload in events:
        pipe.send(key_of(plan, payload), payload, t)
    pipe.run()
    assert_one_outcome_each(pipe)
    assert not pipe.by_topic("dlq")
    event_id = orjson.loads(nested)[plan.schema.event_id]
    (log,) = [o for o in pipe.by_topic("prediction_log") if o.key == event_id.encode()]
    assert log.value.endswith(b',"event":' + nested + b"}")  # the producer's bytes, not re-serialized
    assert orjson.loads(log.value)["event"] == orjson.loads(nested)
    assert check_features(pipe, plan) == len(events)


def test_messages_and_outputs_over_the_limit_become_dead_letters(trained_repo, make_engine):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=0.5)
    template = orjson.loads(events[3])
    big_key = dict(template, **{plan.partition_key: "k" * 1_000_000, plan.schema.event_id: "big-key"})
    big_event = dict(template, **{plan.schema.event_id: "big-event", "padding": "x" * 1_100_000})
    # Fits as input (999,000 bytes) but its prediction log record, which carries it, would not.
    near = dict(template, **{plan.schema.event_id: "near-limit"})
    near["padding"] = "y" * (999_000 - len(orjson.dumps(near)) - len(b',"padding":""'))
    # 995,000 bytes: it and all its outputs fit.
    fits = dict(near, **{plan.schema.event_id: "fits", "padding": near["padding"][:-4000]})
    specials = [
        (str(big_key[plan.partition_key]).encode(), orjson.dumps(big_key)),
        (key_of(plan, events[3]), orjson.dumps(big_event)),
        (b"garbage", random.Random(1).randbytes(5_000_000)),
        (key_of(plan, events[3]), orjson.dumps(near)),
        (key_of(plan, events[3]), orjson.dumps(fits)),
    ]
    for i, payload in enumerate(events):
        pipe.send(key_of(plan, payload), payload, t)
        if i == 20:
            for key, value in specials:
                pipe.send(key, value, t)
    pipe.run()
    assert_one_outcome_each(pipe)
    assert_copies_carry_the_original(pipe)
    dlq = pipe.by_topic("dlq")
    assert len(dlq) == 4
    for out in dlq:
        headers = dict(out.headers)
        reason = headers[HEADER_REASON].decode()
        assert reason.startswith("too large") and "the limit is 1,000,000" in reason
    truncated = sorted(int(dict(o.headers)[HEADER_TRUNCATED]) for o in dlq if HEADER_TRUNCATED in dict(o.headers))
    assert truncated[-1] == 5_000_000 and len(truncated) >= 3
    assert any("its prediction log record, which carries the event (999,000 bytes), could be" in r for r in reasons(dlq))
    (log,) = [o for o in pipe.by_topic("prediction_log") if o.key == b"fits"]
    assert log.value.endswith(orjson.dumps(fits) + b"}")
    assert check_features(pipe, plan) == len(events) + 1


def test_null_and_mismatched_kafka_keys_are_dead_lettered_and_spare_the_entity(trained_repo, make_engine):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=1)
    card = orjson.loads(events[0])[plan.partition_key]
    own = [p for p in events if orjson.loads(p)[plan.partition_key] == card]
    home = zlib.crc32(str(card).encode()) % PARTITIONS
    elsewhere = (home + 1) % PARTITIONS
    # A copy of the card's event keyed by another card lands in another
    # partition, far down its log: it must not take the card's state with it.
    for i in range(200):
        pipe.send(b"filler", orjson.dumps(dict(orjson.loads(events[1]), **{plan.schema.event_id: f"f{i}", plan.partition_key: "filler"})), t, partition=elsewhere)
    wrong = dict(orjson.loads(own[0]), **{plan.schema.event_id: "mis-keyed"})
    pipe.send(b"another-card", orjson.dumps(wrong), t, partition=elsewhere)
    pipe.send(None, orjson.dumps(dict(wrong, **{plan.schema.event_id: "no-key"})), t, partition=home)
    for payload in events:
        pipe.send(key_of(plan, payload), payload, t)
    pipe.run()
    assert_one_outcome_each(pipe)
    assert_copies_carry_the_original(pipe)
    why = sorted(reasons(pipe.by_topic("dlq")))
    assert len(why) == 2
    assert why[0].startswith("Kafka key b'another-card' is not the event's card_id")
    assert why[1] == f"Kafka key is null; produce with key = str({plan.partition_key})"
    assert check_features(pipe, plan) == len(events) + 200


def test_a_far_future_event_is_dead_lettered_and_does_not_move_stream_time(trained_repo, make_engine):
    pipe, plan, events, _ = start(trained_repo, make_engine, hours=1)
    ts = plan.schema.timestamp_field
    for i, payload in enumerate(events):
        event = orjson.loads(payload)
        send_ms = parse_timestamp_ms(event[ts]) + 500  # produced just after the event
        if i == 10:
            event[ts] = "9999-12-31T23:59:59.999Z"
        elif i == 11:
            event[ts] = parse_timestamp_ms(event[ts]) * 1000  # epoch microseconds read as milliseconds
        elif i == 12:
            event[ts] = parse_timestamp_ms(event[ts]) + 3_600_000 + 501  # just beyond the limit
        pipe.send(key_of(plan, payload), orjson.dumps(event), send_ms)
    pipe.run()
    outcomes = assert_one_outcome_each(pipe)
    dlq = reasons(pipe.by_topic("dlq"))
    assert len(dlq) == 3
    assert sum(r.startswith("future time") and "SLUICE_MAX_EVENT_AHEAD_MS" in r for r in dlq) == 2
    assert sum("is out of range" in r for r in dlq) == 1
    assert not pipe.by_topic("late")
    assert check_features(pipe, plan) == len(outcomes) - 3


def test_numbers_beyond_the_limit_are_dead_lettered_and_features_stay_finite(trained_repo, make_engine):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=2)
    amount = next(n for n, k in plan.schema.fields if k == "double")
    cards = [orjson.loads(p)[plan.partition_key] for p in events]
    busiest = max(set(cards), key=cards.count)
    own = [i for i, card in enumerate(cards) if card == busiest]
    assert len(own) >= 4
    for i, payload in enumerate(events):
        if i in own[:2]:
            text = b"1e308" if i == own[0] else str(2**70).encode()
            event = orjson.loads(payload)
            payload = orjson.dumps(dict(event, **{amount: "@"})).replace(b'"@"', text)
        pipe.send(key_of(plan, payload), payload, t)
    pipe.run()
    assert_one_outcome_each(pipe)
    dlq = reasons(pipe.by_topic("dlq"))
    assert len(dlq) == 2 and all("SLUICE_MAX_ABS_VALUE" in r for r in dlq)
    assert check_features(pipe, plan) == len(events) - 2
    for out in pipe.by_topic("prediction_log"):
        for name, value in orjson.loads(out.value)["features"].items():
            assert value is None or math.isfinite(value), name


def test_late_records_carry_the_original_bytes_key_source_and_reason(trained_repo, make_engine):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=1)
    ts = plan.schema.timestamp_field
    for i, payload in enumerate(events):
        pipe.send(key_of(plan, payload), payload, t)
        if i % 50 == 49:
            # Written by hand, with spaces and the fields in another order: what must come back.
            old = orjson.loads(payload)
            old[plan.schema.event_id] = f"stale-{i}"
            old[ts] = "2026-10-01T00:00:00.000+00:00"
            pipe.send(key_of(plan, payload), b"  " + orjson.dumps(dict(reversed(old.items()))) + b"\n", t)
    pipe.run()
    assert_one_outcome_each(pipe)
    late = pipe.by_topic("late")
    assert len(late) == len(events) // 50
    assert all(r.startswith("late: event time is more than") for r in reasons(late))
    assert_copies_carry_the_original(pipe)
    assert all(o.value.startswith(b"  {") and o.key for o in late)
    check_features(pipe, plan)


def test_a_repeated_event_id_is_a_separate_message_with_its_own_prediction(trained_repo, make_engine):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=1)
    ts = plan.schema.timestamp_field
    for i, payload in enumerate(events):
        pipe.send(key_of(plan, payload), payload, t)
        if i == 30:
            pipe.send(key_of(plan, payload), payload, t)
            event = orjson.loads(payload)
            follower = dict(event, **{plan.schema.event_id: "follower", ts: parse_timestamp_ms(event[ts]) + 1000})
            pipe.send(key_of(plan, payload), orjson.dumps(follower), t)
    pipe.run()
    assert_one_outcome_each(pipe)
    event_id = orjson.loads(events[30])[plan.schema.event_id].encode()
    logs = [orjson.loads(o.value) for o in pipe.by_topic("prediction_log") if o.key == event_id]
    assert len(logs) == 2
    assert len([o for o in pipe.by_topic("predictions") if o.key == event_id]) == 2
    assert logs[0]["arrival"] != logs[1]["arrival"]
    # Both copies enter the windows, as the offline path computes them; the
    # second does not see the first (the same millisecond is outside a window).
    first, second = sorted(logs, key=lambda r: r["arrival"][0][1])
    assert second["features"] == first["features"]
    (after,) = [orjson.loads(o.value) for o in pipe.by_topic("prediction_log") if o.key == b"follower"]
    count = "card_txn__txn_count_24h"
    assert after["features"][count] >= first["features"][count] + 2
    check_features(pipe, plan)


def test_dead_letter_reasons_are_counted_under_a_small_fixed_set_of_kinds(trained_repo, make_engine):
    from stream.tools.hostile import hostile_corpus

    pipe, plan, events, t = start(trained_repo, make_engine, hours=0.5)
    for payload in events:
        pipe.send(key_of(plan, payload), payload, t)
    template = orjson.loads(events[-1])
    for m in hostile_corpus(plan.schema, plan.partition_key, template, seed=3):
        pipe.send(m.key, m.value, t)
    pipe.run()
    labels = {s.labels["reason"] for metric in metrics.DLQ.collect() for s in metric.samples}
    assert labels <= set(REASON_KINDS)
    assert {"too_large", "bad_key", "out_of_range", "future_time", "not_object", "null_field"} <= labels
    assert len(REASON_KINDS) <= 12


def test_anything_else_on_a_repartition_topic_is_dead_lettered(trained_repo, make_engine):
    pipe, plan, events, t = start(trained_repo, make_engine, hours=0.5)
    for payload in events:
        pipe.send(key_of(plan, payload), payload, t)
    # Stage 0 only, then rogue records in front of the real ones on stage 1's input.
    pipe.run(stages=1)
    real = pipe.inputs[1][0][0].value
    row = orjson.loads(real)
    del row[0][plan.schema.timestamp_field]
    missing = orjson.dumps([orjson.Fragment(orjson.dumps(row[0])), *row[1:7], len(orjson.dumps(row[0]))])
    rogue = [
        None,
        b"",
        b"\xff garbage",
        b'[{"a": 1}]',
        real[:-3] + b"99]",  # the event's length does not match
        real.replace(b"[", b"[[", 1),
        missing,
        orjson.dumps([orjson.Fragment(b'{"x": 1}'), [], [], 0, 0, 0, [], 8]),
    ]
    queue = pipe.inputs[1][0]
    shifted = [Message(b"rogue", value, i, 0) for i, value in enumerate(rogue)]
    queue[:] = shifted + [Message(m.key, m.value, m.offset + len(rogue), 0) for m in queue]
    pipe.run()
    dlq = pipe.by_topic("dlq")
    assert len(dlq) == len(rogue)
    topic = pipe.engine.repartition_topics[1]
    assert sorted(dict(o.headers)[HEADER_SOURCE].decode() for o in dlq) == sorted(f"{topic}/0/{i}" for i in range(len(rogue)))
    assert all(r.startswith("not valid JSON: not a record forwarded by stage 0") for r in reasons(dlq))
    assert sorted(o.value or b"" for o in dlq) == sorted(v or b"" for v in rogue)
    assert len(pipe.by_topic("prediction_log")) == len(events)


def test_predictions_carry_one_normalized_event_time_and_the_log_keeps_the_raw_event(trained_repo, make_engine):
    # Epoch milliseconds, ISO with an offset, ISO without milliseconds: one
    # form on the prediction (ISO-8601 UTC, milliseconds), the producer's
    # own bytes in the log.
    pipe, plan, events, t = start(trained_repo, make_engine, hours=0.5)
    ts = plan.schema.timestamp_field
    sent = {}
    for i, payload in enumerate(events):
        event = orjson.loads(payload)
        ms = parse_timestamp_ms(event[ts])
        if i % 3 == 0:
            event[ts] = ms
        elif i % 3 == 1:
            local = datetime.fromtimestamp(ms / 1000, tz=timezone(timedelta(hours=5, minutes=30)))
            event[ts] = local.isoformat(timespec="milliseconds")
        payload = orjson.dumps(event)
        sent[str(event[plan.schema.event_id])] = (ms, payload)
        pipe.send(key_of(plan, payload), payload, t)
    pipe.run()
    assert_one_outcome_each(pipe)
    predictions = {o.key.decode(): read_prediction(o.value) for o in pipe.by_topic("predictions")}
    logs = {o.key.decode(): o.value for o in pipe.by_topic("prediction_log")}
    assert len(predictions) == len(events)
    for event_id, (ms, payload) in sent.items():
        expected = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
        assert predictions[event_id]["event_time"] == expected
        assert read_log(logs[event_id])["event_time"] == expected
        assert logs[event_id].endswith(b',"event":' + payload + b"}")
