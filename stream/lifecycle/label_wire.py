"""What travels on the labels topic: labels, clock records, peer clocks and forwarded labels.

* A label: `{<id>: ..., <label>: 1, <time>: ISO}`, keyed by the event id,
  in the partition of its prediction (`label_config.partition_for`).
* A clock record from the label source: key `CLOCK_KEY`, `{"clock": ISO}`,
  to every partition: no label older than that is still to come.
* A peer clock: the same key, `{"clock": ISO, "from": q}`: partition q of the
  join has read its labels up to that time and forwarded every one of them
  that belongs elsewhere (each one ahead of this record, by the same producer).
* A forwarded label: key the event id, `{"forwarded": [q, offset], "label": <the
  original record, byte for byte>}`: the label read at (q, offset), sent on
  to the partition of its prediction. Copies from one partition arrive in
  that partition's offset order, so a copy sent again after a crash is
  recognised by its offset.
"""

from __future__ import annotations

import orjson
from orjson import Fragment

from stream.lifecycle.label_config import CLOCK_KEY
from stream.pipeline.events import iso_ms, parse_timestamp_ms

__all__ = ["CLOCK_KEY", "clock_value", "forwarded_value", "label_value", "read_clock", "read_label"]


def label_value(id_field: str, label_field: str, time_field: str, event_id: str, label, at_ms: int) -> bytes:
    return orjson.dumps({id_field: str(event_id), label_field: label, time_field: iso_ms(at_ms)})


def clock_value(at_ms: int, from_partition: int | None = None) -> bytes:
    if from_partition is None:
        return orjson.dumps({"clock": iso_ms(at_ms)})
    return orjson.dumps({"clock": iso_ms(at_ms), "from": from_partition})


def read_clock(value: bytes | None, partitions: int) -> tuple[int, int | None]:
    """(clock ms, the peer partition that sent it or None for the label source); ValueError/TypeError/KeyError if unreadable."""
    record = orjson.loads(value)
    at_ms = parse_timestamp_ms(record["clock"])
    peer = record.get("from")
    if peer is not None and (type(peer) is not int or not 0 <= peer < partitions):
        msg = f"'from' must be a partition number below {partitions}, not {peer!r}"
        raise ValueError(msg)
    return at_ms, peer


def forwarded_value(raw: bytes, from_partition: int, offset: int) -> bytes:
    # The original bytes go in unchanged: the copy is the label its source wrote.
    return orjson.dumps({"forwarded": [from_partition, offset], "label": Fragment(raw)})


def read_label(value: bytes | None, partitions: int) -> tuple[dict, tuple[int, int] | None]:
    """(the label record, (partition, offset) it was forwarded from or None); ValueError/TypeError/KeyError if unreadable."""
    record = orjson.loads(value)
    if type(record) is dict and "forwarded" in record and "label" in record:
        origin = record["forwarded"]
        if type(origin) is not list or len(origin) != 2 or not all(type(x) is int for x in origin) or not 0 <= origin[0] < partitions:
            msg = f"a forwarded label needs 'forwarded': [partition below {partitions}, offset], not {origin!r}"
            raise ValueError(msg)
        return record["label"], (origin[0], origin[1])
    return record, None
