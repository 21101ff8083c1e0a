"""A backlog of whole micro-batches, then silence: every event is answered without waiting for more traffic.

A worker starts on a backlog whose every partition holds exactly two full
micro-batches (`batch_max` events each), and nothing is produced after
it: no event may wait for a next one to be predicted. The start is also a
rebalance, the moment a chunk could be lost (see
test_consumer_accounting part 3 for that race, forced).
"""

from __future__ import annotations

import zlib
from collections import Counter

import orjson

from features.feast_repo import load_plan, open_store
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.settings import Settings
from tests.stream.outcomes import live_events

PARTITIONS = 4


def test_whole_micro_batches_then_silence_are_all_predicted(broker, own_topic_repo, start_worker, unique):
    bootstrap = broker.bootstrap_servers
    env = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog")}
    topic = own_topic_repo["topic"]
    ensure_topics(bootstrap, [topic], PARTITIONS)
    per_partition = 2 * Settings().batch_max
    kept: Counter = Counter()
    backlog = []
    for payload in live_events(own_topic_repo, hours=400):
        key = orjson.loads(payload)["card_id"].encode()
        partition = zlib.crc32(key) % PARTITIONS  # one partition per card, as keyed producers do
        if kept[partition] < per_partition:
            kept[partition] += 1
            backlog.append((partition, key, payload))
    assert sorted(kept.values()) == [per_partition] * PARTITIONS
    producer = make_producer(bootstrap)
    for partition, key, payload in backlog:
        producer.produce(topic, payload, key, partition=partition)
    assert producer.flush(30) == 0

    id_field = load_plan(open_store(own_topic_repo["path"])).schema.event_id
    waiting = {str(orjson.loads(p)[id_field]).encode() for _, _, p in backlog}

    start_worker(own_topic_repo, env=env, app_id=unique("stall"))
    # Read until every event has its prediction, or nothing came for 30 s.
    for msg in read_topic(bootstrap, env["SLUICE_PREDICTIONS_TOPIC"], idle_s=30, timeout_s=300):
        waiting.discard(msg.key())
        if not waiting:
            break
    assert not waiting, f"{len(waiting)} of {len(backlog)} events have no prediction after 30 s of silence"
