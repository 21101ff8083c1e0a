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
from features.online import latest_events_ms
from stream.lifecycle.label_config import partition_for
from stream.pipeline import forwarded
from stream.pipeline.clock import MARK_KEY
from stream.pipeline.engine import Engine
from stream.pipeline.outcomes import HEADER_KIND, HEADER_REASON, HEADER_SOURCE, Message, Output

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
    event_ms: int  # its event time
    keys: list[bytes]  # per stage: the key its input is partitioned by
    partitions: list[int]  # per stage: the partition holding the event's state


class Answer(NamedTuple):
    log: dict  # the prediction log record the stream would write
    ages_ms: dict[str, float | None]  # per feature: how old what it is computed from is (docs/serving.md)


def question(engine: Engine, raw: bytes, timestamp_ms: int, partitions: int) -> Question | Refused:
    """The event checked as the first stage checks it, or why it would be dead-lettered."""
    validator = engine.validator
    parsed = _valid_with_key(engine, raw, timestamp_ms)
    if parsed is None:  # invalid: the reason the first stage gives, judged as it judges
        parsed = validator.parse([raw], [ASK_OFFSET], None, [timestamp_ms])
        if parsed.rejects:
            return Refused(parsed.rejects[0].kind, parsed.rejects[0].reason)
        key = str(parsed.records[0][engine.plan.partition_key]).encode()
        parsed = validator.parse([raw], [ASK_OFFSET], [key], [timestamp_ms])  # with its key: the size of key + value
        if parsed.rejects:
            return Refused(parsed.rejects[0].kind, parsed.rejects[0].reason)
    key = str(parsed.records[0][engine.plan.partition_key]).encode()
    record = parsed.records[0]
    keys = [key] + [_stage_key(record, fields) for fields in engine.stages[1:]]
    event_ms = int(parsed.columns.ts[0])
    return Question(raw, key, record, timestamp_ms, event_ms, keys, [partition_for(k, partitions) for k in keys])


def _valid_with_key(engine: Engine, raw: bytes, timestamp_ms: int):
    """The event parsed once, with the key a producer would give it, if that passes every check; else None.

    A pass is what `question`'s two parses give (the key checked is the
    validated value's); anything else takes their way, for their reason.
    """
    try:
        key = str(orjson.loads(raw)[engine.plan.partition_key]).encode()
    except (orjson.JSONDecodeError, TypeError, KeyError, IndexError):
        return None
    parsed = engine.validator.parse([raw], [ASK_OFFSET], [key], [timestamp_ms])
    return None if parsed.rejects else parsed


def _stage_key(record: dict, fields: tuple[str, ...]) -> bytes:
    """The key a stage's input is written with (what `handoff.forward` writes)."""
    return KEY_SEP.join(str(record[k]) for k in fields).encode()


def ask(engine: Engine, q: Question, states: Sequence[Mapping[str, bytes]]) -> Answer | Refused:
    """The stream's answer for `q` from `states` (per stage: the state holding the question's partition)."""
    return ask_many(engine, [q], states)[0]


def ask_many(engine: Engine, questions: list[Question], states: Sequence[Mapping[str, bytes]]) -> list[Answer | Refused]:
    """Answers for questions asked together, in one pass per stage (`Engine.process_many`).

    Question i takes offset ASK_OFFSET + i in its partition: a later question
    of the same entity counts the earlier ones, as the stream will once they
    are produced in this order. Each stage's outcome is mapped back to its
    question by that offset (the first stage's, which every record carries).
    """
    results: list[Answer | Refused | None] = [None] * len(questions)
    ages: list[dict] = [{} for _ in questions]
    messages = {i: Message(q.key, q.raw, ASK_OFFSET + i, q.timestamp_ms) for i, q in enumerate(questions)}
    unscored = {engine.topics["late"], engine.topics["dlq"]}
    for stage in range(len(engine.stages)):
        state, nxt = states[stage], {}
        by_partition: dict[int, list[Message]] = {}
        for i, stage_ages in _stream_ages(engine, stage, state, {i: questions[i] for i in messages}).items():
            ages[i].update(stage_ages)
        for i, message in messages.items():
            by_partition.setdefault(questions[i].partitions[stage], []).append(message)
        parts = sorted(by_partition.items())
        for outcome in engine.process_many(stage, parts, state, counted=False):
            for out in outcome.outputs:
                if out.topic in unscored:
                    i = _source_index(out)
                    results[i] = _refused(out)
                elif stage < engine.last_stage:
                    if out.key == MARK_KEY:
                        continue  # the arrival clock's mark for the next stage: not a question's record
                    i = forwarded.decode(out.value)[0].arrival[0][1] - ASK_OFFSET
                    nxt[i] = Message(out.key, out.value, ASK_OFFSET + i, questions[i].timestamp_ms)
                elif out.topic == engine.topics["prediction_log"]:
                    log = orjson.loads(out.value)
                    i = log["arrival"][0][1] - ASK_OFFSET
                    results[i] = Answer(log, {**ages[i], **_batch_ages(engine, questions[i].record)})
        messages = nxt
    return [r if r is not None else Refused("invalid", "no outcome") for r in results]


def _source_index(out: Output) -> int:
    """The question a late or dead-letter copy is of: its source offset (events/partition/offset)."""
    source = dict(out.headers or ())[HEADER_SOURCE].decode()
    return int(source.rsplit("/", 1)[1]) - ASK_OFFSET


def _refused(out: Output) -> Refused:
    headers = dict(out.headers or ())
    reason = headers.get(HEADER_REASON, b"").decode()
    kind = headers.get(HEADER_KIND)
    return Refused(kind.decode() if kind else "late", reason)


def _stream_ages(engine: Engine, stage: int, state, questions: dict[int, Question]) -> dict[int, dict[str, float | None]]:
    """Per question, per stream feature of the stage: the event's time minus the newest event its entity's window held.

    None: the window held none. Each view's states are read together (its layouts derived once per call).
    """
    aggregator = engine.aggregators[stage]
    ages: dict[int, dict[str, float | None]] = {i: {} for i in questions}
    for view in aggregator.views:
        names = [f"{view.name}__{a.name}" for a in view.aggs]
        entities = [KEY_SEP.join(str(q.record[k]) for k in view.join_keys) for q in questions.values()]
        blobs = [state.get(aggregator.table_key(view.name, entity)) for entity in entities]
        for (i, q), newest in zip(questions.items(), latest_events_ms(view, blobs)):
            age = None if newest is None else float(q.event_ms - newest)
            ages[i].update(dict.fromkeys(names, age))
    return ages


def _batch_ages(engine: Engine, record: dict) -> dict[str, float | None]:
    """Per batch feature: how long ago the worker read it from the online store (None: not read)."""
    cache = getattr(engine.batch, "cache", None)
    ages: dict[str, float | None] = {}
    for view in engine.plan.batch_views:
        read_s = cache.read_age_s(view.name, tuple(str(record[k]) for k in view.join_keys)) if cache else None
        ages.update({f"{view.name}__{f}": None if read_s is None else read_s * 1000 for f in view.features})
    return ages
