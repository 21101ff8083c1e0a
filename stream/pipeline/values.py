"""What one value of an event must be: times, numbers, key fields, and the reason when it is not.

The per-value rules `stream.pipeline.events.EventValidator` applies, one
value at a time (`_check`, `_check_key`, `parse_timestamp_ms`) or a whole
column of event times at once (`_times`), and the limits they enforce.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
#: Event times Sluice accepts, in epoch milliseconds: the years 1 to 9999
#: (what ISO-8601 text can say), for integer times too. Window arithmetic on
#: int64 stays far from overflow inside this range.
MIN_TIME_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
#: Longest value of a key field (UTF-8 bytes): keys name state, Kafka keys and table keys.
MAX_KEY_BYTES = 1024
#: Longest ISO-8601 text taken as a time (Python reads any number of fraction digits).
MAX_TIME_TEXT = 64


class Invalid(ValueError):
    """One reason an event is rejected, with its kind."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def clip(text: str, limit: int = 120) -> str:
    """Text short enough to quote in a reason (reasons travel in headers)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def parse_timestamp_ms(value) -> int:
    """ISO-8601 text with a UTC offset (or 'Z'), or integer epoch milliseconds, within the years 1-9999."""
    if isinstance(value, str):
        try:
            if len(value) > MAX_TIME_TEXT:
                raise ValueError(value)
            parsed = datetime.fromisoformat(value)
        except ValueError:
            msg = f"is not ISO-8601 text ({clip(repr(value), 60)}); write e.g. 2026-11-01T10:00:00.250Z"
            raise Invalid("wrong_type", msg) from None
        if parsed.tzinfo is None:
            raise Invalid("wrong_type", "has no timezone; add 'Z' or an offset such as +00:00")
        # Exact integer arithmetic, floored (float seconds would round).
        ms = (parsed - _EPOCH) // _MS
    elif type(value) is int:
        ms = value
    elif isinstance(value, float) and not MIN_TIME_MS <= value <= MAX_TIME_MS:
        ms = int(value)  # an integer too long for 64 bits reads as a float: say it is out of range
    else:
        msg = f"must be ISO-8601 text with a timezone or integer epoch milliseconds, got {type(value).__name__}"
        raise Invalid("wrong_type", msg)
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        msg = (
            f"is out of range ({clip(str(value), 40)}): event times lie in the years 1 to 9999, "
            f"epoch milliseconds {MIN_TIME_MS} to {MAX_TIME_MS} (microseconds are not milliseconds)"
        )
        raise Invalid("out_of_range", msg)
    return ms


def _number(value, kind: str, max_abs: float):
    """A double or long field in canonical form, or raise Invalid."""
    cls = type(value)
    if kind == "double" and cls is int:
        value, cls = float(value), float
    if cls is float or cls is int:
        if not -max_abs <= value <= max_abs:
            msg = f"is out of range: |{clip(repr(value), 40)}| exceeds {max_abs:g} (SLUICE_MAX_ABS_VALUE)"
            raise Invalid("out_of_range", msg)
        if kind == "long" and cls is float:
            raise Invalid("wrong_type", "must be an integer, got float")
        return value
    noun = "a number" if kind == "double" else "an integer"
    raise Invalid("wrong_type", f"must be {noun}, got {cls.__name__}")


def _check(kind: str, value, max_abs: float):
    """The value in canonical form, or raise Invalid with the reason."""
    if kind == "string":
        if type(value) is not str:
            raise Invalid("wrong_type", f"must be a string, got {type(value).__name__}")
        return value
    if kind == "double" or kind == "long":
        return _number(value, kind, max_abs)
    if kind == "bool":
        if type(value) is not bool:
            raise Invalid("wrong_type", f"must be true or false, got {type(value).__name__}")
        return value
    if kind == "timestamp":
        return parse_timestamp_ms(value)
    raise Invalid("wrong_type", f"has unknown kind {kind}")


#: Characters a key field can hold without a look at its UTF-8 length.
_SHORT_KEY = MAX_KEY_BYTES // 4


def _check_key(value) -> None:
    """A key field's value must name an entity: non-empty, printable, at most MAX_KEY_BYTES."""
    text = value if type(value) is str else str(value)
    if not text or not text.isprintable():
        raise Invalid("bad_key", "is empty or holds control characters")
    if len(text) > _SHORT_KEY and len(text.encode()) > MAX_KEY_BYTES:
        raise Invalid("bad_key", f"is {len(text.encode()):,} bytes long; key fields hold at most {MAX_KEY_BYTES}")


def _times(column: list) -> list[int] | None:
    """`parse_timestamp_ms` of every value when all are ISO-8601 text it reads without complaint, else None."""
    if set(map(type, column)) != {str} or max(map(len, column)) > MAX_TIME_TEXT:
        return None
    try:
        parsed = list(map(datetime.fromisoformat, column))
    except ValueError:
        return None
    if any(p.tzinfo is None for p in parsed):
        return None
    ms = [(p - _EPOCH) // _MS for p in parsed]
    if not (MIN_TIME_MS <= min(ms) and max(ms) <= MAX_TIME_MS):
        return None
    return ms


def iso_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC text with a 'Z'."""
    seconds, ms = divmod(int(epoch_ms), 1000)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(tzinfo=None).isoformat() + f".{ms:03d}Z"
