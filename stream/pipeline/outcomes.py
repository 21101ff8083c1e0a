"""What goes into and comes out of one micro-batch: messages, outputs, dead-letter and late copies.

Sizes are counted as the broker counts them, so that no output the engine
returns can be refused for its size (see `stream.pipeline.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from stream.pipeline.events import MAX_KEY_BYTES, clip

HEADER_REASON = "sluice.reason"
HEADER_SOURCE = "sluice.source"
#: On a dead letter: the reason's kind (one of stream.pipeline.events.REASON_KINDS), for rates by reason.
HEADER_KIND = "sluice.kind"
#: On a dead-letter or late copy cut to fit the message limit: the original size in bytes.
HEADER_TRUNCATED = "sluice.truncated"
HEADER_TRUNCATED_KEY = "sluice.truncated_key"
#: On a dead-letter or late copy: the consumer group (app id) that wrote it, so that the monitor of one
#: group does not count another group's copies when several groups read one events topic.
HEADER_APP = "sluice.app_id"
#: Bytes a record costs beyond its key, value and headers, and each header beyond
#: its name and value (librdkafka counts 36 and 5; measured with confluent-kafka).
RECORD_OVERHEAD = 64
HEADER_OVERHEAD = 8


@dataclass
class Message:
    """What the engine needs of a consumed Kafka message."""

    key: bytes | None
    value: bytes | None  # None: a tombstone
    offset: int
    timestamp_ms: int
    #: A later stage's records are folded in arrival order (stream.pipeline.clock): `seq` is a record's place
    #: in it, what the windows see as its arrival; None: its offset. NO_PLACE: a record with no place in it
    #: (not a forwarded record), which is dead-lettered.
    seq: int | None = None


NO_PLACE = -1


class Output(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None  # None: the key decides


#: `tuple_new(Output, (topic, key, value, None, None))` is `Output(topic, key, value)` without the generated
#: constructor's Python frame (0.2 of its 0.5 µs here): for the loops that write an output or two per event.
tuple_new = tuple.__new__


@dataclass
class BatchOutcome:
    """One partition's result of a micro-batch, composed from what the engine's steps returned.

    The worker produces `outputs`, then stores `writes`; the counts are for its metrics and logs.
    """

    outputs: list[Output] = field(default_factory=list)
    writes: dict[str, bytes] = field(default_factory=dict)
    predictions: int = 0
    dlq: int = 0
    late: int = 0
    replayed: int = 0
    latencies_s: list[float] = field(default_factory=list)


def wire_size(key: bytes | None, value: bytes | None, headers) -> int:
    """What a record counts against the broker's message limit."""
    size = RECORD_OVERHEAD + (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
    for name, data in headers or ():
        size += HEADER_OVERHEAD + len(name) + len(data)
    return size


def copy_of(
    topic: str, key: bytes | None, value: bytes | None, reason: str, source: str, max_bytes: int, kind: str | None = None,
    app_id: str | None = None,
) -> Output:
    """A dead-letter or late copy of a message: its own bytes and key, cut to fit `max_bytes` if need be."""
    headers = [(HEADER_REASON, clip(reason, 400).encode()), (HEADER_SOURCE, source.encode())]
    if kind is not None:
        headers.append((HEADER_KIND, kind.encode()))
    if app_id is not None:
        headers.append((HEADER_APP, app_id.encode()))
    if key is not None and len(key) > MAX_KEY_BYTES:
        headers.append((HEADER_TRUNCATED_KEY, str(len(key)).encode()))
        key = key[:MAX_KEY_BYTES]
    if value is not None and wire_size(key, value, headers) > max_bytes:
        headers.append((HEADER_TRUNCATED, str(len(value)).encode()))
        value = value[: max(0, max_bytes - wire_size(key, b"", headers))]
    return Output(topic, key, value, headers)


def oversize(what: str, key: bytes, payload: bytes, max_bytes: int) -> str | None:
    """Why an output cannot be produced because of its size, or None."""
    size = wire_size(key, payload, None)
    if size <= max_bytes:
        return None
    return f"too large: its {what} would be {size:,} bytes, the limit is {max_bytes:,} (SLUICE_MAX_MESSAGE_BYTES)"
