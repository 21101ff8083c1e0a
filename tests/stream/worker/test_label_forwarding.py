"""Labels produced to the wrong partition of the labels topic, through a real worker on the real broker.

The join forwards such a label to the partition of its prediction. The
forwarded copy lands behind whatever that partition already holds: the
label source's clock records and later labels. Each case here makes sure
it does (the labels are produced while no worker reads them), then checks
that every misplaced label is joined exactly as a label produced to the
right partition would be: `joined`, never `unmatched_label`, and its event
never `unlabeled`.
"""

from __future__ import annotations

import orjson
import pytest

from stream.kafka.clients import ensure_topics, make_producer
from stream.lifecycle.label_config import CLOCK_KEY, partition_for
from stream.pipeline.events import iso_ms
from tests.stream.worker.test_label_join_worker import DAY_MS, _events, _ms, _produce_events, _read, label_env  # noqa: F401

P = 4
#: Misplaced labels per case (spread over every partition).
N = 24


class Source:
    """A label source that chooses each label's partition itself (as a producer with another partitioner would)."""

    def __init__(self, bootstrap: str, topic: str):
        self.topic, self.producer = topic, make_producer(bootstrap)

    def label(self, event_id: str, value: int, at_ms: int, *, misplaced: bool) -> None:
        right = partition_for(event_id.encode(), P)
        record = {"transaction_id": event_id, "is_fraud": value, "label_time": iso_ms(at_ms)}
        self.producer.produce(self.topic, orjson.dumps(record), event_id.encode(), partition=(right + 1) % P if misplaced else right)

    def clock(self, at_ms: int) -> None:
        for partition in range(P):
            self.producer.produce(self.topic, orjson.dumps({"clock": iso_ms(at_ms)}), CLOCK_KEY, partition=partition)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def _outcomes(bootstrap: str, topic: str, expect: int) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    for m in _read(bootstrap, topic, expect):
        record = orjson.loads(m.value())
        got.setdefault(record["transaction_id"], []).append(record["kind"])
    return got


@pytest.mark.parametrize("others", [False, True], ids=["alone", "with-other-labels"])
def test_labels_on_the_wrong_partition_join_though_clock_and_later_labels_got_there_first(
    broker, own_topic_repo, start_worker, label_env, unique, tmp_path, others,
):
    bootstrap, topic = broker.bootstrap_servers, own_topic_repo["topic"]
    ensure_topics(bootstrap, [topic], P)
    live, payloads = _events(own_topic_repo, 4, 3, "F")
    ids, times = list(live["transaction_id"]), [_ms(t) for t in live["event_time"]]
    at = dict(zip(ids, times))
    misplaced, joined, late = ids[:N], ids[N : 2 * N], ids[2 * N : 3 * N]
    assert len(ids) > 3 * N and {partition_for(i.encode(), P) for i in misplaced} == set(range(P))
    app_id = unique("labels-fwd")
    first = start_worker(own_topic_repo, env={**label_env, "SLUICE_DATA_DIR": str(tmp_path / "a")}, app_id=app_id)
    _produce_events(bootstrap, topic, payloads)
    assert len(_read(bootstrap, label_env["SLUICE_PREDICTION_LOG_TOPIC"], len(ids))) >= len(ids)
    # Everything the source sends is on the broker before any of it is read, so every
    # forwarded copy lands behind the clock records (and the later labels) of its partition.
    first.stop()
    source = Source(bootstrap, label_env["SLUICE_LABELS_TOPIC"])
    source.clock(times[0])  # a clock record sent before the labels: nothing is due yet
    for i in misplaced:
        source.label(i, 1, at[i] + 3_600_000, misplaced=True)
    if others:  # in time order after them: labels that join, and labels after their window (7 d)
        for i in joined:
            source.label(i, 1, at[i] + 2 * DAY_MS, misplaced=False)
        for i in late:
            source.label(i, 1, at[i] + 8 * DAY_MS, misplaced=False)
    source.clock(times[-1] + 60 * DAY_MS)  # every window and grace is over
    source.flush()
    start_worker(own_topic_repo, env={**label_env, "SLUICE_DATA_DIR": str(tmp_path / "b")}, app_id=app_id)
    expected = {i: ["unlabeled"] for i in ids}
    expected.update({i: ["joined"] for i in misplaced})
    if others:
        expected.update({i: ["joined"] for i in joined})
        expected.update({i: ["unlabeled", "correction"] for i in late})
    got = _outcomes(bootstrap, label_env["SLUICE_LABELED_TOPIC"], sum(map(len, expected.values())))
    right = sum(1 for i in misplaced if got.get(i) == ["joined"])
    print(f"misplaced labels joined: {right} of {N}")
    assert got == expected
