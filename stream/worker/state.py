"""The state mapping the engine reads and writes, over a Faust table and its store."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable

from features.history import write_order
from features.overlay import Overlay
from stream.kafka.delivery import Deliveries
from stream.worker.ends import FENCE_KEY

#: RocksDB-backed table states, whose read caches a rebalance clears (recovery writes around them).
ROCKS_STATES: list = []


class TableState:
    """The mapping the engine reads and writes, over a Faust table.

    Faust owns the table: it creates the changelog topic, restores the table
    from it on start and on rebalance, and moves it with its partitions. The
    worker writes the changelog itself, with confluent-kafka in one group per
    chunk (to the chunk's own partition, so state follows its input), and
    waits for the broker before it acks the input: Faust's own path sends
    each key through aiokafka, which costs more than all the feature work.

    State computed by a chunk whose commit has not finished is staged in an
    overlay over the store, tagged with the chunk's number (key -> (blob,
    chunk number)); reads see it first. A value of None deletes its key (a
    tombstone on the changelog).
    """

    #: The order a state write reaches the changelog in (a crash leaves a prefix of it).
    order = staticmethod(write_order)

    def __init__(self, table, deliveries: Deliveries, fence: bool = True, warm=None):
        self.table = table
        self.warm = warm  # features.warm.WarmLookup: state for entities the table has not seen
        self.deliveries = deliveries
        self.fence = fence
        self.in_flight: asyncio.Future | None = None  # the latest state write's delivery
        self.store = _store_of(table)
        self.overlay: Overlay[bytes] = Overlay(_Stored(self.store, warm))
        # The engine reads state per entity per batch: bound here, a read costs no call through this object.
        self.get = self.overlay.get
        self.counted_at = 0.0  # when `entities()` was last read (stream.worker.committer)

    @property
    def pending(self) -> dict[str, tuple[bytes | None, int]]:
        return self.overlay.pending

    def entities(self) -> int:
        """Keys this worker holds in the table (entities plus a few markers per partition; RocksDB: an estimate)."""
        return self.store.count()

    @property
    def topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def stage(self, writes: dict[str, bytes | None], chunk: int) -> None:
        self.overlay.stage(writes, chunk)

    def discard(self, chunks: Collection[int], keys: Iterable[str]) -> None:
        """Chunks that will not commit (their partition was revoked) stop shadowing the table."""
        self.overlay.discard(chunks, keys)

    async def write(self, partition: int, writes: dict[str, bytes], chunk: int) -> None:
        """Store the merged writes of chunks up to number `chunk` (their outputs are durable)."""
        topic, deliveries = self.topic, self.deliveries
        records = [(topic, k.encode(), v, None, partition) for k, v in self.order(writes)]
        self.in_flight = deliveries.send(records)
        last_offset = await deliveries.wait(self.in_flight)
        if self.fence:
            # Some brokers (Tansu) report a partition's end offset as the start
            # of its last batch + 1. Recovery no longer trusts end offsets (it
            # marks the end itself: stream.worker.ends.mark_ends), but other
            # readers of the changelog may.
            last_offset = await deliveries.wait(deliveries.send([(topic, FENCE_KEY, b"", None, partition)]))
        self.store.put_many(partition, writes, last_offset)
        self.overlay.committed(writes, chunk)


class _Stored:
    """What the table holds for a key, else the warm start's state for it."""

    __slots__ = ("store_get", "warm")

    def __init__(self, store, warm):
        self.store_get, self.warm = store.get, warm

    def get(self, key: str, default=None):
        value = self.store_get(key.encode())
        if value is None and self.warm is not None:
            value = self.warm.get(key)
        return default if value is None else value


def _store_of(table):
    """Direct access to a Faust table's store, without Faust's per-event context.

    The worker reads and writes state outside of any Faust event (in the
    stage's gathered computation and in the committers), for several
    partitions at once. Faust's stores pick a partition from the current
    event: the RocksDB store asserts there is one on write, and on read
    looks only in the current event's partition.
    """
    store = table.data
    if hasattr(store, "_db_for_partition"):
        return _RocksState(store, table.changelog_topic.get_topic_name())
    data = getattr(store, "data", None)
    return _MemoryState(data if type(data) is dict else store)


class _MemoryState:
    """The plain dict behind Faust's in-memory store (its Mapping.get costs ~1 µs a miss)."""

    def __init__(self, data):
        self.data = data
        self.get = data.get

    def count(self) -> int:
        return len(self.data)

    def put_many(self, partition: int, writes: dict[str, bytes], last_offset: int | None) -> None:
        data = self.data
        for key, value in writes.items():
            if value is None:
                data.pop(key.encode(), None)
            else:
                data[key.encode()] = value


class _RocksState:
    """Faust's RocksDB store, one database per partition, with the changelog offset it holds.

    After each state write the partition's database records the offset of
    the last changelog record written, as Faust's own recovery does: a
    worker restarted on the same data directory then reads only what was
    written to the changelog after that, not the whole changelog.
    """

    #: Values kept in memory in front of RocksDB (cleared when full and at every rebalance).
    CACHE_ENTRIES = 500_000

    def __init__(self, store, changelog_topic: str):
        self.rocks, self.topic = store, changelog_topic
        # Reads return the very object last written, so the engine's decoded
        # state cache (keyed by object identity) keeps working; RocksDB would
        # hand out a new bytes object on every read.
        self.cache: dict[bytes, bytes | None] = {}
        ROCKS_STATES.append(self)

    def count(self) -> int:
        # RocksDB's own estimate, per partition database: exact counting would read every key.
        total = 0
        for db in list(getattr(self.rocks, "_dbs", {}).values()):
            total += int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
        return total

    def get(self, key: bytes):
        cache = self.cache
        if key in cache:
            return cache[key]
        hit = self.rocks._get_bucket_for_key(key)
        value = None if hit is None else hit.value
        if len(cache) > self.CACHE_ENTRIES:
            cache.clear()
        cache[key] = value
        return value

    def put_many(self, partition: int, writes: dict[str, bytes], last_offset: int | None) -> None:
        import rocksdict
        from faust.types.tuples import TP

        rocks = self.rocks
        batch = rocksdict.WriteBatch(raw_mode=True)
        index = rocks._key_index
        cache = self.cache
        for key, value in writes.items():
            encoded = key.encode()
            if value is None:
                batch.delete(encoded)
                index.pop(encoded, None)
            else:
                batch.put(encoded, value)
                index[encoded] = partition
            cache[encoded] = value
        rocks._db_for_partition(partition).write(batch)
        if last_offset is not None:
            rocks.set_persisted_offset(TP(self.topic, partition), last_offset)
