"""What travels with an event from one stage to the next, in memory and on a repartition topic.

On the topic a forwarded record is a JSON array whose first item is the
event's original bytes, spliced in as they are (never re-serialized), and
whose last item is their length, so the next stage can take them out
unchanged. `ForwardedRow` names the items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import orjson
from orjson import Fragment

_OPEN, _COMMA = ord("["), ord(",")
#: What reading a forwarded record's contents into arrays can raise.
UNREADABLE = (ValueError, TypeError, OverflowError, KeyError, IndexError)


class ForwardedRow(NamedTuple):
    """One forwarded record, item by item (the order is the wire format)."""

    event: object  # the event, parsed (its bytes travel beside it)
    features: list[float]  # stream features of the earlier stages, in `Engine.stage_names` order
    arrival: list  # [[partition, offset], ...]: where the event was read, stage by stage
    t0_ms: float  # Kafka timestamp of the original event: where its latency starts
    source_wm: int  # the first stage's watermark when it forwarded the event
    event_ts_ms: int  # the event's time, as the first stage read it
    stage_ms: list[float]  # each earlier stage's feature time for the event's batch
    clock: int  # the event's arrival clock (features/arrival.py): with arrival[0], its place in the arrival order
    event_bytes: int  # length of the event's original bytes (the first item on the wire)


@dataclass
class Carried:
    """What travels with each valid event of a batch from stage to stage, as columns."""

    t0: np.ndarray  # Kafka timestamp (ms) of the original event: the start of its latency
    arrival: list  # [[partition, offset], ...] per stage so far
    features: np.ndarray  # stream features computed by earlier stages
    names: list[str]  # their qualified names
    stage_ms: list  # per event: feature time (ms) of each earlier stage's batch
    source_wm: np.ndarray  # first-stage watermark carried by each event
    raw: list[bytes]  # each event's original bytes, as its producer wrote them
    keys: list[bytes | None] | None  # their Kafka keys (first stage; later: the partition key's value)
    clock: np.ndarray  # each event's arrival clock (features/arrival.py)
    sources: np.ndarray | None = None  # later stages: (first-stage partition, offset, watermark) per event


def encode(
    raw: bytes, features: list, arrival: list, t0_ms: float, source_wm: int, event_ts_ms: int, stage_ms: list, clock: int
) -> bytes:
    """A forwarded record; raises TypeError (orjson.JSONEncodeError) if something cannot be written."""
    return orjson.dumps([Fragment(raw), features, arrival, t0_ms, source_wm, event_ts_ms, stage_ms, clock, len(raw)])


def decode(payload: bytes | None) -> tuple[ForwardedRow, bytes]:
    """(the row, the event's original bytes) of a forwarded record; ValueError if it is not one.

    The items' contents are checked where they are read into arrays.
    """
    row = orjson.loads(payload)
    if type(row) is not list or len(row) != len(ForwardedRow._fields):
        msg = f"not a {len(ForwardedRow._fields)}-item array"
        raise ValueError(msg)
    size = row[-1]
    if type(size) is not int or not 0 < size < len(payload) - 1 or payload[0] != _OPEN or payload[1 + size] != _COMMA:
        msg = "its last item is not the length of the event in front"
        raise ValueError(msg)
    return ForwardedRow(*row), payload[1 : 1 + size]


def forwarded_event(payload: bytes) -> dict:
    """The original event inside a record on a repartition topic."""
    return orjson.loads(payload)[0]
