"""Fetching ahead (`SLUICE_PREFETCH_WAIT_MS`, off by default): the worker's consumer fetches while the loop computes.

An option of `stream.worker.consumer.ShortFetchConsumerThread`, measured and
left off (docs/performance.md, "Fetching ahead"): not faster in the pairs
measured, and standby copies fell behind with it on.
"""

from __future__ import annotations


#: How long a fetch's records, untaken, hold back the broker's next fetch when the worker fetches ahead: a
#: waiting `getmany` takes them within a thread switch (Python hands the lock between threads every 5 ms).
AHEAD_AFTER_S = 0.005


def fetch_ahead(fetcher, wait_ms: int) -> None:
    """Let aiokafka's `fetcher` fetch the other partitions while a fetch's records wait to be taken.

    aiokafka sends a broker no fetch while any partition's fetched records
    wait to be taken (for up to its `prefetch_backoff`, 100 ms), and Faust
    takes them in the worker's event loop, between the engine calls of both
    stages: records reaching the broker meanwhile wait for the loop, then for
    a whole fetch (docs/performance.md, "Where an event's latency goes").
    With a backoff of `AHEAD_AFTER_S` instead, the consumer's thread fetches
    the other partitions while the loop computes. Not at once: when a
    `getmany` waits (the loop is idle), it takes the records within a few
    ms, and the next fetch then names every partition. A fetch sent ahead
    names only the partitions holding nothing untaken, and aiokafka has one
    fetch per broker in flight; if those partitions have nothing new, the
    broker holds it for its wait, and the partitions taken meanwhile are
    fetched again only after it. So a fetch sent while records wait waits
    at most `wait_ms`; one sent when every partition's records were taken
    keeps the full wait.
    """
    fetcher._prefetch_backoff = AHEAD_AFTER_S  # read when a fetch's records are stored
    full_ms = fetcher._fetch_max_wait_ms
    ahead_ms = min(wait_ms, full_ms)
    plan = fetcher._get_actions_per_node  # builds each fetch request, with the fetcher's wait

    def actions(assignment):
        fetcher._fetch_max_wait_ms = ahead_ms if fetcher._records else full_ms
        return plan(assignment)

    fetcher._get_actions_per_node = actions


def fetch_ahead_once_started(consumer, wait_ms: int) -> None:
    """Apply `fetch_ahead` to an aiokafka `consumer` when it starts (its fetcher exists only from then on)."""
    start = consumer.start

    async def start_fetching_ahead():
        await start()  # the fetcher fetches once partitions are assigned
        fetch_ahead(consumer._fetcher, wait_ms)

    consumer.start = start_fetching_ahead
