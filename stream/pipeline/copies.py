"""Dead-letter and late copies of an app's events: what each step returns for the events it cannot pass on.

A copy carries the original bytes and key of the message it stands for, and
where that message was read (`sluice.source`), so that the copies of one
event look the same whichever step made them.
"""

from __future__ import annotations

from collections.abc import Mapping

from stream import metrics
from stream.pipeline.forwarded import Carried
from stream.pipeline.outcomes import Output, copy_of


class Copies:
    """Writes the copies for one app: `topics` maps a role ("dlq", "late", "events") to its topic."""

    def __init__(self, topics: Mapping[str, str], app_id: str, partition_key: str, max_message_bytes: int):
        self.topics = topics
        self.app_id = app_id
        self.partition_key = partition_key
        self.max_message_bytes = max_message_bytes

    def dead_letter(self, kind: str, reason: str, key: bytes | None, value: bytes | None, source: str) -> Output:
        metrics.DLQ.labels(kind).inc()
        return copy_of(self.topics["dlq"], key, value, reason, source, self.max_message_bytes, kind, self.app_id)

    def late(self, carried: Carried, i: int, record: dict, reason: str) -> Output:
        key, source = self.origin(carried, i, record)
        return copy_of(self.topics["late"], key, carried.raw[i], reason, source, self.max_message_bytes, app_id=self.app_id)

    def event_dead_letter(self, carried: Carried, i: int, record: dict, kind: str, reason: str) -> Output:
        """The dead letter of a valid event whose outputs cannot be produced."""
        key, source = self.origin(carried, i, record)
        return self.dead_letter(kind, reason, key, carried.raw[i], source)

    def origin(self, carried: Carried, i: int, record: dict) -> tuple[bytes | None, str]:
        """A valid event's Kafka key and events-topic position (topic/partition/offset), at any stage.

        Later stages rebuild the key from the partition key's value, which
        the first stage checked it equals.
        """
        key = carried.keys[i] if carried.keys is not None else str(record[self.partition_key]).encode()
        partition, offset = carried.arrival[i][0]
        return key, f"{self.topics['events']}/{partition}/{offset}"
