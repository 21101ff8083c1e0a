"""Parse and validate raw events; every rejection carries a reason and a kind.

Validation follows the schema the Feast KafkaSource declares (JsonFormat
schema_json) plus the limits that keep one message from stopping or
distorting the pipeline: message size, key fields, the Kafka key, the range
of numbers and times. A bad event never raises: it comes back as a `Reject`
(input position, reason, kind) so the worker can send it to the dead-letter
topic and count it under its kind, one of `REASON_KINDS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import orjson

from features.columns import EventColumns
from features.spec import EventSchema
from stream.pipeline.values import (
    _SHORT_KEY,
    MAX_KEY_BYTES,
    MAX_TIME_MS,
    MIN_TIME_MS,
    Invalid,
    _check,
    _check_key,
    _times,
    clip,
    iso_ms,
    parse_timestamp_ms,
)

#: What other modules import from here (the value rules live in stream.pipeline.values).
__all__ = [
    "MAX_DEPTH", "MAX_KEY_BYTES", "MAX_TIME_MS", "MIN_TIME_MS", "REASON_KINDS", "EventValidator", "Invalid",
    "ParsedBatch", "Reject", "clip", "columns_of", "iso_ms", "parse_timestamp_ms",
]

#: Deepest nesting an event may have: orjson reads 1024 levels, and a
#: forwarded record holds the event one level down.
MAX_DEPTH = 1023
#: Every label `sluice_dlq_total{reason}` can take.
REASON_KINDS = (
    "too_large",  # message or one of its outputs over SLUICE_MAX_MESSAGE_BYTES
    "invalid_json",  # no value, empty, not UTF-8, not JSON (NaN and Infinity are not JSON)
    "not_object",  # JSON, but not an object
    "missing_field",
    "null_field",
    "wrong_type",  # includes a timestamp that is not ISO-8601 with a timezone
    "out_of_range",  # a number beyond SLUICE_MAX_ABS_VALUE, a time outside the years 1-9999
    "future_time",  # event time too far ahead of the Kafka timestamp
    "bad_key",  # Kafka key or key field: null, mismatched, empty, control characters, too long
    "unserializable",  # an output could not be written as JSON
)
_MISSING = object()


class Reject(NamedTuple):
    index: int  # input position
    reason: str
    kind: str  # one of REASON_KINDS


@dataclass
class ParsedBatch:
    """Valid events as columns plus the rejects, both tied to input positions."""

    index: np.ndarray  # input position of each valid event
    columns: EventColumns
    records: list[dict]  # the valid events as parsed
    rejects: list[Reject]


class EventValidator:
    """Validates raw JSON events against one stream schema and the input limits.

    `partition_key` (the field the events topic is keyed by) turns on the
    Kafka key check in `parse`: a message's key must be `str(value).encode()`
    of that field, so that all of an entity's events share one partition.
    `outputs_fit(raw, event)`, last, may reject a valid event whose outputs
    would not fit the message limit (the reason, or None): it is decided
    here, before the event enters any window.
    """

    def __init__(
        self,
        schema: EventSchema,
        key_fields: tuple[str, ...],
        *,
        partition_key: str | None = None,
        max_message_bytes: int = 1_000_000,
        max_event_ahead_ms: int = 3_600_000,
        max_abs_value: float = 1e15,
        outputs_fit: Callable[[bytes, dict], str | None] | None = None,
    ):
        self.last_ts_ms = 0
        self.outputs_fit = outputs_fit
        self.schema = schema
        self.partition_key = partition_key
        self.max_message_bytes = max_message_bytes
        self.max_event_ahead_ms = max_event_ahead_ms
        self.max_abs_value = max_abs_value
        keys = frozenset(key_fields) | {schema.event_id}
        self.key_fields = keys
        declared = {n for n, _ in schema.fields}
        self._fields = tuple((n, k, n in keys) for n, k in schema.fields)
        # Entity keys some view joins on that the schema does not declare: required all the same.
        self._undeclared_keys = tuple(k for k in sorted(keys) if k not in declared)
        self.numeric = [n for n, k in schema.fields if k in ("double", "long")]

    def validate(self, event) -> str | None:
        """Reason the event is invalid, or None (see `problem`)."""
        problem = self.problem(event)
        return None if problem is None else problem.reason

    def problem(self, event, *, times: bool = True) -> Invalid | None:
        """Why the event is invalid, or None.

        Numbers are normalised in place (a JSON 3 for a double becomes 3.0);
        the timestamp keeps the text the producer wrote, and its value in
        epoch milliseconds is left in `self.last_ts_ms`. With `times` False
        the timestamp only has to be there (later stages carry its value).
        """
        if type(event) is not dict:
            kind = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
            return Invalid("not_object", f"not a JSON object (got {kind.get(type(event), 'null')})")
        max_abs = self.max_abs_value
        get = event.get
        for name, kind, is_key in self._fields:
            value = get(name, _MISSING)
            # The common cases first, inline: a short printable string, a float in range.
            if type(value) is str and kind == "string":
                if not is_key or (value and len(value) <= _SHORT_KEY and value.isprintable()):
                    continue
            elif type(value) is float and kind == "double" and -max_abs <= value <= max_abs:
                continue
            if value is _MISSING:
                return Invalid("missing_field", f"missing field {name!r}")
            if value is None:
                return Invalid("null_field", f"field {name!r} is null")
            try:
                if kind == "timestamp" and not times:
                    continue
                checked = _check(kind, value, max_abs)
                if is_key:
                    _check_key(checked)
            except Invalid as exc:
                return Invalid(exc.kind, f"{'key field' if is_key else 'field'} {name!r} {exc.reason}")
            if kind == "timestamp":
                self.last_ts_ms = checked
            elif kind == "double":
                event[name] = checked
        for name in self._undeclared_keys:
            value = event.get(name)
            if value is None:
                return Invalid("missing_field", f"missing key field {name!r}")
            try:
                if type(value) not in (str, int):
                    raise Invalid("wrong_type", f"must be a string or an integer, got {type(value).__name__}")
                _check_key(value)
            except Invalid as exc:
                return Invalid(exc.kind, f"key field {name!r} {exc.reason}")
        return None

    def problems(self, events: list, *, times: bool = True) -> tuple[list[Invalid | None], list[int | None]]:
        """`problem` of each event, and each valid event's time in epoch ms (None where not read), column by column.

        Each declared field is checked for the whole batch at once (its
        values' types, lengths and range, in C loops); only an event that
        some column's quick check does not pass is judged by `problem`, so
        every event gets exactly the reason `problem` gives it, and its
        numbers are normalised the same way.
        """
        n = len(events)
        stamps: list[int | None] = [None] * n
        suspects = self._suspects(events, stamps, times)
        found: list[Invalid | None] = [None] * n
        for i in sorted(suspects):
            found[i] = self.problem(events[i], times=times)
            stamps[i] = self.last_ts_ms if times and found[i] is None else None
        return found, stamps

    def _suspects(self, events: list, stamps: list, times: bool) -> set[int]:
        """Positions whose events some column's quick check did not pass; fills `stamps` for the times it read."""
        n = len(events)
        everyone = set(range(n))
        if not n or self._undeclared_keys or set(map(type, events)) != {dict}:
            return everyone
        max_abs = self.max_abs_value
        suspects: set[int] = set()
        for name, kind, is_key in self._fields:
            column = [e.get(name) for e in events]  # missing and null both read None: neither passes
            types = set(map(type, column))
            if kind == "string":
                ok = types == {str} and (
                    not is_key
                    or (min(map(len, column)) > 0 and max(map(len, column)) <= _SHORT_KEY and all(map(str.isprintable, column)))
                )
                if not ok:
                    suspects.update(
                        i for i, v in enumerate(column)
                        if type(v) is not str or (is_key and not (v and len(v) <= _SHORT_KEY and v.isprintable()))
                    )
            elif kind == "double" and not is_key:
                # The sum is finite only if every value is (no NaN gets past min and max).
                if not (types == {float} and -max_abs <= min(column) and max(column) <= max_abs
                        and math.isfinite(sum(column))):
                    suspects.update(
                        i for i, v in enumerate(column) if not (type(v) is float and -max_abs <= v <= max_abs)
                    )
            elif kind == "timestamp" and not is_key:
                if not times:
                    if type(None) in types:
                        suspects.update(i for i, v in enumerate(column) if v is None)
                    continue
                read = _times(column)
                if read is None:
                    return everyone
                for i, ms in enumerate(read):
                    stamps[i] = ms
            else:
                return everyone
        return suspects

    def _loaded(self, raw, key: bytes | None):
        """(event, None) for a message that reads as JSON within the limits, else (None, Invalid)."""
        if raw is None:
            return None, Invalid("invalid_json", "not valid JSON: the message has no value (a tombstone)")
        size = len(raw) + (len(key) if key is not None else 0)
        if size > self.max_message_bytes:
            msg = f"too large: the message is {size:,} bytes, the limit is {self.max_message_bytes:,} (SLUICE_MAX_MESSAGE_BYTES)"
            return None, Invalid("too_large", msg)
        try:
            event = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError) as exc:
            return None, Invalid("invalid_json", f"not valid JSON: {clip(str(exc), 200)}")
        if len(raw) > 2 * MAX_DEPTH and _deeper_than_allowed(raw):
            return None, Invalid("invalid_json", f"nested deeper than {MAX_DEPTH} levels (Sluice reads 1024 and forwards an event one level down)")
        return event, None

    def _message_problem(self, raw, event: dict, key: bytes | None, kafka_ms: int, ts_ms: int, pk: str | None):
        """What rejects a valid event for its message (its Kafka key, its time, its outputs' size), or None."""
        if pk is not None:
            expected = str(event[pk]).encode()
            if key is None:
                return Invalid("bad_key", f"Kafka key is null; produce with key = str({pk})")
            if key != expected:
                got = clip(repr(key), 60)
                msg = f"Kafka key {got} is not the event's {pk} {clip(repr(expected), 60)}; produce with key = str({pk})"
                return Invalid("bad_key", msg)
        # Judged against the Kafka timestamp, not the clock, so that a replay decides the same.
        if kafka_ms > 0 and ts_ms - kafka_ms > self.max_event_ahead_ms:
            ahead = ts_ms - kafka_ms
            msg = (
                f"future time: event time {iso_ms(ts_ms)} is {ahead:,} ms ahead of the message's "
                f"Kafka timestamp {iso_ms(kafka_ms)}; the limit is {self.max_event_ahead_ms:,} ms (SLUICE_MAX_EVENT_AHEAD_MS)"
            )
            return Invalid("future_time", msg)
        if self.outputs_fit is not None:
            too_large = self.outputs_fit(raw, event)
            if too_large is not None:
                return Invalid("too_large", too_large)
        return None

    def parse(
        self,
        values: list[bytes | None],
        seqs: list[int],
        keys: list[bytes | None] | None = None,
        kafka_ms: list[int] | None = None,
    ) -> ParsedBatch:
        """Validate one batch of raw messages.

        `keys` (Kafka keys) enable the size check on key plus value and, with
        `partition_key`, the key check; `kafka_ms` (Kafka timestamps) the
        future-time check. Without them those checks are skipped.
        """
        good_idx, records, rejects, stamps = [], [], [], []
        n = len(values)
        pk = self.partition_key if keys is not None else None
        keys = keys if keys is not None else [None] * n
        kafka_ms = kafka_ms if kafka_ms is not None else [0] * n
        early: list[Invalid | None] = []
        events = []
        loads, limit, shallow = orjson.loads, self.max_message_bytes, 2 * MAX_DEPTH
        for raw, key in zip(values, keys):
            # The usual message, read here: one that `_loaded` would accept without a look at its depth.
            if raw is not None and len(raw) <= shallow and len(raw) + (len(key) if key is not None else 0) <= limit:
                try:
                    events.append(loads(raw))
                except (orjson.JSONDecodeError, TypeError):
                    pass
                else:
                    early.append(None)
                    continue
            event, problem = self._loaded(raw, key)  # the rest, with the reason for a reject
            early.append(problem)
            if problem is None:
                events.append(event)
        found, times = self.problems(events)
        at = 0
        for i, (raw, key, ts_kafka, problem) in enumerate(zip(values, keys, kafka_ms, early)):
            if problem is None:
                event, problem, ts = events[at], found[at], times[at]
                at += 1
                if problem is None:
                    self.last_ts_ms = ts
                    problem = self._message_problem(raw, event, key, ts_kafka, ts, pk)
            if problem is not None:
                rejects.append(Reject(i, problem.reason, problem.kind))
                continue
            good_idx.append(i)
            records.append(event)
            stamps.append(ts)
        index = np.asarray(good_idx, dtype=np.int64)
        ts = np.asarray(stamps, dtype=np.int64)
        fields = columns_of(self.schema, records)
        seq = np.asarray(seqs, dtype=np.int64)[index] if len(index) else np.zeros(0, dtype=np.int64)
        return ParsedBatch(index=index, columns=EventColumns(ts, seq, fields), records=records, rejects=rejects)


def _deeper_than_allowed(raw: bytes) -> bool:
    if raw.count(b"[") + raw.count(b"{") < MAX_DEPTH + 1:
        return False  # cannot nest that deep (brackets inside strings count too: an upper bound)
    try:
        orjson.loads(b"[" + raw + b"]")
    except orjson.JSONDecodeError:
        return True
    return False


def columns_of(schema: EventSchema, records: list[dict]) -> dict[str, np.ndarray]:
    """Field columns of validated records (numbers as float64, the rest as objects)."""
    fields = {}
    for name, kind in schema.fields:
        if kind in ("double", "long"):
            fields[name] = np.fromiter((r[name] for r in records), dtype=np.float64, count=len(records))
        elif kind != "timestamp":
            column = np.empty(len(records), dtype=object)
            column[:] = [r[name] for r in records]
            fields[name] = column
    return fields

