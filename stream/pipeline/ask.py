"""A question to the engine: what would the stream answer for this event if it arrived now?

`ask` runs one event through the same steps a micro-batch takes (decode
and validate, the windows of every stage, the hand-off between stages,
batch features, scoring, rules) against the state as it is, and returns
the prediction log record the stream would write, without writing
anything: the window step returns its state writes instead of storing
them, and they are dropped here. The event is placed after everything the
state holds (offset `ASK_OFFSET` in every stage), which is where it lands
when it is produced next: the answer equals the stream's as long as no
other event of the same entities is folded in between (see
docs/serving.md, "Three ways to ask for a prediction").

`question` checks an event exactly as the first stage would (the same
validator: a reject's reason is the dead letter's) and says, per stage,
which key and partition hold its state; the caller must own them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import orjson

from features.columns import KEY_SEP
from features.online import latest_event_ms
from stream.lifecycle.label_config import partition_for
from stream.pipeline.engine import Engine
from stream.pipeline.handoff import forward
from stream.pipeline.outcomes import HEADER_KIND, HEADER_REASON, Message, Output
from stream.pipeline.windowed import sift

#: The offset a question takes in every stage: after anything a state holds.
ASK_OFFSET = 1 << 62


class Refused(NamedTuple):
    """Why an event gets no prediction: `kind` is a dead-letter kind, or "late"."""

    kind: str
    reason: str


class Question(NamedTuple):
    raw: bytes  # the event as sent
    key: bytes  # its Kafka key: str(partition key), as producers must write it
    record: dict  # parsed and validated
    timestamp_ms: int  # the Kafka timestamp it is judged by (the request's arrival)
    keys: list[bytes]  # per stage: the key its input is partitioned by
    partitions: list[int]  # per stage: the partition holding the event's state


class Answer(NamedTuple):
    log: dict  # the prediction log record the stream would write
    ages_ms: dict[str, float | None]  # per feature: how old what it is computed from is (docs/serving.md)


def question(engine: Engine, raw: bytes, timestamp_ms: int, partitions: int) -> Question | Refused:
    """The event checked as the first stage checks it, or why it would be dead-lettered."""
    validator = engine.validator
    parsed = validator.parse([raw], [ASK_OFFSET], None, [timestamp_ms])
    if parsed.rejects:
        return Refused(parsed.rejects[0].kind, parsed.rejects[0].reason)
    key = str(parsed.records[0][engine.plan.partition_key]).encode()
    parsed = validator.parse([raw], [ASK_OFFSET], [key], [timestamp_ms])  # with its key: the size of key + value
    if parsed.rejects:
        return Refused(parsed.rejects[0].kind, parsed.rejects[0].reason)
    record = parsed.records[0]
    keys = [key] + [_stage_key(record, fields) for fields in engine.stages[1:]]
    return Question(raw, key, record, timestamp_ms, keys, [partition_for(k, partitions) for k in keys])


def _stage_key(record: dict, fields: tuple[str, ...]) -> bytes:
    """The key a stage's input is written with (what `handoff.forward` writes)."""
    return KEY_SEP.join(str(record[k]) for k in fields).encode()


def ask(engine: Engine, q: Question, states: Sequence[Mapping[str, bytes]]) -> Answer | Refused:
    """The stream's answer for `q` from `states` (per stage: the state holding the question's partition)."""
    messages = [Message(q.key, q.raw, ASK_OFFSET, q.timestamp_ms)]
    ages: dict[str, float | None] = {}
    serving, batch = engine.serving, engine.batch  # one deployment, as for a batch
    for stage in range(len(engine.stages)):
        partition, state = q.partitions[stage], states[stage]
        decoded = engine.decoder.decode(stage, messages, -1, partition)
        if decoded.dead_letters or not len(decoded.columns):
            return _refused(decoded.dead_letters)
        columns, records, carried = decoded.columns, decoded.records, decoded.carried
        ages.update(_stream_ages(engine, stage, state, records[0], int(columns.ts[0])))
        result = engine.aggregators[stage].process(state, partition, columns, carried.sources, engine.n_sources)
        if result.late[0]:
            lateness = engine.plan.schema.allowed_lateness_ms
            return Refused("late", f"late: event time is more than {lateness} ms behind stream time")
        windowed = sift(stage, result, columns, records, carried, -1, 0.0, engine.stream_names, engine.copies, 0)
        if stage < engine.last_stage:
            nxt = stage + 1
            sent = forward(
                nxt, engine.repartition_topics[nxt], engine.stages[nxt], windowed, records, carried, columns.ts,
                result.watermark, engine.copies,
            )
            if sent.dead_letters:
                return _refused(sent.dead_letters)
            messages = [Message(sent.rows[0].key, sent.rows[0].value, ASK_OFFSET, q.timestamp_ms)]
            continue
        predicted = engine.predictor.predict(serving, batch, windowed, records, carried, columns.ts, counted=False)
        if predicted.dead_letters:
            return _refused(predicted.dead_letters)
        ages.update(_batch_ages(engine, records[0]))
        return Answer(orjson.loads(predicted.records[1].value), ages)
    msg = "a plan has at least one stage"
    raise AssertionError(msg)


def _refused(dead_letters: list[Output]) -> Refused:
    if not dead_letters:
        return Refused("invalid", "no valid event")
    headers = dict(dead_letters[0].headers or ())
    return Refused(headers.get(HEADER_KIND, b"invalid").decode(), headers.get(HEADER_REASON, b"").decode())


def _stream_ages(engine: Engine, stage: int, state, record: dict, event_ms: int) -> dict[str, float | None]:
    """Per stream feature of the stage: the event's time minus the newest event its entity's window held (None: none)."""
    aggregator, ages = engine.aggregators[stage], {}
    for view in aggregator.views:
        entity = KEY_SEP.join(str(record[k]) for k in view.join_keys)
        newest = latest_event_ms(view, state.get(aggregator.table_key(view.name, entity)))
        age = None if newest is None else float(event_ms - newest)
        ages.update({f"{view.name}__{a.name}": age for a in view.aggs})
    return ages


def _batch_ages(engine: Engine, record: dict) -> dict[str, float | None]:
    """Per batch feature: how long ago the worker read it from the online store (None: not read)."""
    cache = getattr(engine.batch, "cache", None)
    ages: dict[str, float | None] = {}
    for view in engine.plan.batch_views:
        read_s = cache.read_age_s(view.name, tuple(str(record[k]) for k in view.join_keys)) if cache else None
        ages.update({f"{view.name}__{f}": None if read_s is None else read_s * 1000 for f in view.features})
    return ages
