"""Fetching ahead (`SLUICE_PREFETCH_WAIT_MS`, stream/worker/prefetch.py `fetch_ahead`).

The worker's real consumer (a `ChunkingApp`'s, over its consumer thread and
aiokafka) on the embedded broker. Records of partition 0 are fetched and
left untaken; records then produced to partition 1 must be fetched while
partition 0's still wait, by fetches that wait the short time and leave
partition 0 out; once nothing waits, fetches wait the full time again.

aiokafka's own hold (no fetch to a broker while a fetch's records wait,
for at most 100 ms) is lengthened here to an hour, so that the test does
not race it: without `fetch_ahead`, no fetch goes out while partition 0's
records wait, and partition 1's records are never fetched.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.consumer.fetcher import Fetcher as AiokafkaFetcher
from faust.types.tuples import TP

from stream.kafka.clients import ensure_topics, make_producer
from stream.worker.consumer import ChunkMessage
from tests.stream.worker.test_consumer_accounting import _consumer, _fetch, _started

AHEAD_MS = 10
FULL_MS = 50


def _produce(bootstrap: str, topic: str, partition: int, n: int) -> None:
    producer = make_producer(bootstrap)
    for i in range(n):
        producer.produce(topic, b"p%d-%d" % (partition, i), b"k", partition=partition)
    assert producer.flush(10) == 0


async def _until(thread, check, timeout_s: float = 20.0) -> bool:
    """Whether `check(fetcher)`, run on the consumer's thread, came true before the deadline."""
    fetcher = thread._ensure_consumer()._fetcher

    async def look():
        return check(fetcher)

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await thread.call_thread(look):
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture
def long_hold(monkeypatch):
    monkeypatch.setitem(AiokafkaFetcher.__init__.__kwdefaults__, "prefetch_backoff", 3600.0)


def test_the_other_partitions_are_fetched_with_a_short_wait_while_a_fetchs_records_wait(broker, unique, tmp_path, long_hold):
    bootstrap = broker.bootstrap_servers
    topic = unique("ahead")
    ensure_topics(bootstrap, [topic], 2)
    first, second = TP(topic, 0), TP(topic, 1)
    _produce(bootstrap, topic, 0, 3)

    async def main():
        app, consumer = await _consumer(unique("ahead"), bootstrap, tmp_path, {topic})
        app.fetch_max_wait_ms, app.prefetch_wait_ms = FULL_MS, AHEAD_MS
        thread = consumer._thread
        sent: list[tuple[set, set, int]] = []  # per fetch: partitions named, partitions whose records waited, wait
        try:
            await _started(consumer, {first, second})
            fetcher = thread._ensure_consumer()._fetcher
            plan = fetcher._get_actions_per_node  # the fetcher sends each request it returns at once

            def watched(assignment):
                held = {TP(tp.topic, tp.partition) for tp in fetcher._records}
                actions = plan(assignment)
                for _, request in actions[0]:
                    named = {TP(t, p) for t, parts in request.topics for p, _, _ in parts}
                    sent.append((named, held, request._max_wait_ms))
                return actions

            async def watch():
                fetcher._get_actions_per_node = watched

            await thread.call_thread(watch)
            held_first = await _until(thread, lambda f: first in f._records)
            _produce(bootstrap, topic, 1, 2)
            both_held = await _until(thread, lambda f: first in f._records and second in f._records)
            got = await _fetch(consumer, {first: 3, second: 2})
            refetched = len(sent)
            _produce(bootstrap, topic, 0, 1)
            got_more = await _fetch(consumer, {first: 1})
            return held_first, both_held, got, got_more, sent, refetched
        finally:
            await thread.stop()

    held_first, both_held, got, got_more, sent, refetched = asyncio.run(main())
    assert held_first
    # Partition 1's records were fetched while partition 0's waited to be taken.
    assert both_held
    assert [r[1] for m in got[first] for r in m.records] == [b"p0-0", b"p0-1", b"p0-2"]
    assert [r[1] for m in got[second] for r in m.records] == [b"p1-0", b"p1-1"]
    assert all(isinstance(m, ChunkMessage) for m in got[first] + got[second])
    assert [r[1] for m in got_more[first] for r in m.records] == [b"p0-0"]
    ahead = [(named, held, wait) for named, held, wait in sent if first in held]
    assert ahead, sent
    # A fetch sent while records waited names only the other partitions, and waits the short time.
    assert all(named == {second} and wait == AHEAD_MS for named, held, wait in ahead), ahead
    # Once every record was taken, fetches name every partition again and wait the full time.
    after = sent[refetched:]
    assert after and all(wait == FULL_MS for named, held, wait in after if not held), after
    assert any(named == {first, second} for named, held, wait in after if not held), after
