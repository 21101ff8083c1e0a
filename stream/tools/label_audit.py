"""Measuring the label join: every count of `sluice demo --labels`, and the bytes a pending prediction holds.

Read from the topics and the join's changelog after a run; nothing here
serves (the labeled sink and the online metrics are stream.services.labels).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from stream.kafka.clients import topic_partitions
from stream.kafka.reader import assigned_consumer, read_topic
from stream.lifecycle import label_state as ls
from stream.lifecycle.label_join import CLOCK_KEY


def pending_bytes(bootstrap: str, changelog_topic: str) -> tuple[float, int]:
    """(mean bytes a pending prediction holds in the join's changelog: key, value and its index id; how many seen).

    A pending prediction is an entry with a prediction and no label yet, as
    it was written (the changelog keeps every version of every entry). The
    changelog is read to a marker appended to each partition, not until quiet.
    """
    sizes = []
    for msg in _read_to_end(bootstrap, changelog_topic):
        key, value = msg.key() or b"", msg.value()
        if not key.startswith(ls.ENTRY_PREFIX.encode()) or not value:
            continue
        entry = ls.decode(value)
        if entry.has_pred and not entry.has_label and not entry.closed:
            index = len(key) - len(ls.ENTRY_PREFIX) + 1  # its id in one bucket segment, and a separator
            sizes.append(len(key) + len(value) + index)
    return (float(np.mean(sizes)) if sizes else float("nan")), len(sizes)


def _read_to_end(bootstrap: str, topic: str, timeout_s: float = 300.0):
    """Every message of a table changelog, up to a marker appended to each partition now (exact on any broker)."""
    from faust.types.tuples import TP

    from stream.worker.ends import mark_ends

    n = topic_partitions(bootstrap, topic)
    ends = {tp.partition: end for tp, end in mark_ends(bootstrap, [TP(topic, p) for p in range(n)]).items()}
    consumer = assigned_consumer(bootstrap, topic, n)
    try:
        done, deadline = set(), time.monotonic() + timeout_s
        while len(done) < n and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=0.5):
                if msg.error():
                    continue
                if msg.offset() >= ends[msg.partition()] - 1:
                    done.add(msg.partition())
                if msg.offset() < ends[msg.partition()] - 1:
                    yield msg
    finally:
        consumer.close()


def audit(bootstrap: str, *, labels_topic: str, labeled: list[dict], predictions: int) -> dict:
    """The join's counts: labels sent (read from the labels topic) and the outcome records by kind."""
    sent = sum(1 for m in read_topic(bootstrap, labels_topic, idle_s=2.0, timeout_s=300) if m.key() != CLOCK_KEY)
    kinds = Counter(r["kind"] for r in labeled)
    return {
        "labels_sent": sent,
        "labels_joined": kinds["joined"],
        "labels_duplicate": kinds["duplicate"],
        "labels_corrected": kinds["correction"],
        "labels_unmatched": kinds["unmatched_label"],
        "predictions_unlabeled": kinds["unlabeled"],
        "accounted": sent == kinds["joined"] + kinds["duplicate"] + kinds["correction"] + kinds["unmatched_label"],
        "predictions_accounted": predictions == kinds["joined"] + kinds["unlabeled"],
    }
