"""Exact end offsets of changelog partitions, by appending a marker record to each.

Faust restores a table by reading its changelog up to the end offsets the
broker reports; where a broker reports less (the embedded one can), the
marker's offset, which the broker assigns on acknowledging it, is the end.
"""

from __future__ import annotations

from faust.types.tuples import TP

from features.errors import SluiceError
from stream.kafka.clients import make_producer

#: Table key of the marker records closing changelog writes and recoveries (never read as state).
FENCE_KEY = b"\x00fence"


def mark_ends(bootstrap: str, partitions: list[TP], timeout_s: float = 30.0) -> dict[TP, int]:
    """Exact end offsets: append a marker to each partition and return the offset after it.

    Faust restores a table by reading its changelog up to the end offsets the
    broker reports. The embedded broker (Tansu) can report less than the
    true end (measured: an end offset 1,742 records below what a reader had
    already read), so a restore stopped early and the table came back stale
    (features wrong), or Faust stopped with a ConsistencyError. The offset
    the broker assigns to a record it acknowledges is exact on every broker:
    everything written before the marker is below it.
    """
    producer = make_producer(bootstrap, **{"enable.idempotence": False, "acks": "all", "linger.ms": 0})
    offsets: dict[TP, int] = {}
    errors: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")
        else:
            offsets[TP(msg.topic(), msg.partition())] = msg.offset() + 1

    for tp in partitions:
        producer.produce(tp.topic, b"", FENCE_KEY, partition=tp.partition, on_delivery=delivered)
    left = producer.flush(timeout_s)
    if left or errors:
        msg = f"could not mark the end of {len(partitions)} changelog partitions ({errors[:3] or 'timed out'})"
        raise SluiceError(msg)
    return offsets
