"""Parse and validate raw events; every rejection carries a reason.

Validation follows the schema the Feast KafkaSource declares (JsonFormat
schema_json). A bad event never raises: it comes back as (index, reason) so
the worker can send it to the dead-letter topic and count it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson

from features.columns import EventColumns
from features.spec import EventSchema

_MS = 1000


def parse_timestamp_ms(value) -> int:
    """ISO-8601 text with a UTC offset (or 'Z'), or integer epoch milliseconds."""
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("has no timezone; add 'Z' or an offset such as +00:00")
        return _exact_ms(parsed)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError("must be ISO-8601 text with a timezone or integer epoch milliseconds")


def _exact_ms(parsed: datetime) -> int:
    # Whole seconds and milliseconds apart: float seconds would round.
    whole = int(parsed.replace(microsecond=0).timestamp())
    return whole * _MS + parsed.microsecond // 1000


def _check(kind: str, value):
    """The value in canonical form, or raise ValueError with the reason."""
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {type(value).__name__}")
        return value
    if kind == "double":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value
    if kind == "long":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {type(value).__name__}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {type(value).__name__}")
        return value
    if kind == "timestamp":
        return parse_timestamp_ms(value)
    raise ValueError(f"has unknown kind {kind}")


@dataclass
class ParsedBatch:
    """Valid events as columns plus the rejects, both tied to input positions."""

    index: np.ndarray  # input position of each valid event
    columns: EventColumns
    records: list[dict]  # the valid events as parsed
    rejects: list[tuple[int, str]]  # (input position, reason)


class EventValidator:
    """Validates raw JSON events against one stream schema."""

    def __init__(self, schema: EventSchema, key_fields: tuple[str, ...]):
        self.last_ts_ms = 0
        self.schema = schema
        self.key_fields = frozenset(key_fields) | {schema.event_id}
        self.numeric = [n for n, k in schema.fields if k in ("double", "long")]

    def validate(self, event) -> str | None:
        """Reason the event is invalid, or None.

        Numbers are normalised in place (a JSON 3 for a double becomes 3.0);
        the timestamp keeps the text the producer wrote, and its value in
        epoch milliseconds is left in `self.last_ts_ms`.
        """
        if not isinstance(event, dict):
            return f"not a JSON object (got {type(event).__name__})"
        for name, kind in self.schema.fields:
            if name not in event or event[name] is None:
                return f"missing field {name!r}"
            try:
                value = _check(kind, event[name])
            except ValueError as exc:
                return f"field {name!r} {exc}"
            except (OverflowError, OSError) as exc:
                return f"field {name!r} is out of range ({exc})"
            if name in self.key_fields and (not value or not str(value).isprintable()):
                return f"key field {name!r} is empty or holds control characters"
            if kind == "timestamp":
                self.last_ts_ms = value
            elif kind == "double":
                event[name] = value
        return None

    def parse(self, values: list[bytes], seqs: list[int]) -> ParsedBatch:
        good_idx, records, rejects, stamps = [], [], [], []
        for i, raw in enumerate(values):
            try:
                event = orjson.loads(raw)
            except (orjson.JSONDecodeError, TypeError) as exc:
                rejects.append((i, f"not valid JSON: {exc}"))
                continue
            reason = self.validate(event)
            if reason is not None:
                rejects.append((i, reason))
                continue
            good_idx.append(i)
            records.append(event)
            stamps.append(self.last_ts_ms)
        index = np.asarray(good_idx, dtype=np.int64)
        ts = np.asarray(stamps, dtype=np.int64)
        fields = columns_of(self.schema, records)
        seq = np.asarray(seqs, dtype=np.int64)[index] if len(index) else np.zeros(0, dtype=np.int64)
        return ParsedBatch(index=index, columns=EventColumns(ts, seq, fields), records=records, rejects=rejects)


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


def iso_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC text with a 'Z'."""
    seconds, ms = divmod(int(epoch_ms), 1000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms:03d}Z"
