"""One cheap look at what the broker holds for a consumer group: topics, end offsets, committed offsets.

The worker's own clients (aiokafka inside Faust, the delivery producers)
only notice a lost broker when they next need it, which for an idle worker
is never. A `LogProbe` asks on its own: one metadata request, one
ListOffsets request per partition leader, one OffsetFetch from the group
coordinator. It never subscribes, so it takes no part in the group.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import OFFSET_INVALID, KafkaException, TopicPartition

from features.errors import SluiceError
from stream.kafka.clients import make_consumer

#: Kafka's ListOffsets "timestamp" asking for the latest offset (the end of a partition).
_LATEST = -1


class ProbeFailed(SluiceError):
    """The broker (or the group's coordinator, or a partition's leader) did not answer in time."""


@dataclass(frozen=True)
class LogView:
    """What the broker reported in one probe."""

    partitions: dict[str, int]  # topic -> partition count, for the watched topics that exist
    ends: dict[tuple[str, int], int]  # (topic, partition) -> end offset (Tansu reports less, never going back)
    committed: dict[tuple[str, int], int]  # (topic, partition) -> the group's committed offset, where it has one


class LogProbe:
    """A confluent-kafka consumer used only for metadata and offset look-ups."""

    def __init__(self, bootstrap: str, group: str):
        # Reconnect quickly after an outage (librdkafka backs off up to 10 s
        # by default), and keep its connection errors out of the log: the
        # watch reports the outage itself, once.
        self._consumer = make_consumer(
            bootstrap,
            **{"group.id": group, "enable.auto.commit": False, "reconnect.backoff.max.ms": 500, "log_level": 0},
        )

    def look(self, topics: list[str], committed_topics: list[str], timeout_s: float) -> LogView:
        """The watched `topics` as the broker sees them now; raises ProbeFailed if any part goes unanswered."""
        consumer = self._consumer
        try:
            meta = consumer.list_topics(timeout=timeout_s)
            partitions = {t: len(meta.topics[t].partitions) for t in topics if t in meta.topics and not meta.topics[t].error}
            wanted = [TopicPartition(t, p, _LATEST) for t, n in partitions.items() for p in range(n)]
            ends = {}
            if wanted:
                for tp in consumer.offsets_for_times(wanted, timeout=timeout_s):
                    if tp.error is not None:
                        raise ProbeFailed(f"end offset of {tp.topic}[{tp.partition}]: {tp.error.str()}")
                    ends[(tp.topic, tp.partition)] = tp.offset
            asked = [TopicPartition(t, p) for t in committed_topics for p in range(partitions.get(t, 0))]
            committed = {}
            if asked:
                for tp in consumer.committed(asked, timeout=timeout_s):
                    if tp.error is not None:
                        raise ProbeFailed(f"committed offset of {tp.topic}[{tp.partition}]: {tp.error.str()}")
                    if tp.offset != OFFSET_INVALID and tp.offset >= 0:
                        committed[(tp.topic, tp.partition)] = tp.offset
        except KafkaException as exc:
            raise ProbeFailed(exc.args[0].str()) from exc
        return LogView(partitions, ends, committed)

    def close(self) -> None:
        self._consumer.close()
