"""A restarted worker finds its copies on disk and how far behind their changelogs they are.

The RocksDB stores are Faust's own, written as a worker writes them; no
broker (the end offsets are given, or the broker is unreachable).
"""

from __future__ import annotations

import faust
from faust.types.tuples import TP

from stream.worker.restored import local_offsets, near_their_end, restored_copies

TABLES = ("state-0", "state-1")


def _app(tmp_path) -> faust.App:
    app = faust.App("restart", broker="kafka://localhost:1", store="rocksdb://", datadir=str(tmp_path), topic_partitions=4)
    for table in TABLES:
        app.Table(table, partitions=4, key_type=bytes, value_type=bytes)
    return app


def _changelog(table: str) -> str:
    return f"restart-{table}-changelog"


def test_the_offsets_a_worker_persisted_are_read_back_from_its_stores(tmp_path):
    app = _app(tmp_path)
    written = {TP(_changelog("state-0"), 1): 41, TP(_changelog("state-1"), 1): 17, TP(_changelog("state-1"), 3): 5}
    tables = {t.changelog_topic.get_topic_name(): t for t in app.tables.values()}
    for tp, offset in written.items():
        store = tables[tp.topic].data
        store.set_persisted_offset(tp, offset)
    for table in app.tables.values():
        for db in table.data._dbs.values():
            db.close()
    assert local_offsets(_app(tmp_path)) == written


def test_a_partition_counts_as_caught_up_when_its_tables_copies_together_lack_few_enough_records():
    a, b = _changelog("state-0"), _changelog("state-1")
    ends = {TP(t, p): 1_000 for t in (a, b) for p in range(4)}
    held = {
        TP(a, 0): 999, TP(b, 0): 899,  # 100 behind in all: near
        TP(a, 1): 600, TP(b, 1): 599,  # 399 + 400 behind: too far for 700, near for 800
        TP(a, 2): 999,  # state-1's copy missing: 1,000 behind
        # partition 3: no copy at all
    }
    assert near_their_end(held, ends, lag_records=700) == {TP(a, 0), TP(b, 0)}
    assert near_their_end(held, ends, lag_records=800) == {TP(t, p) for t in (a, b) for p in (0, 1)}
    assert near_their_end(held, ends, lag_records=1_000) == {TP(t, p) for t in (a, b) for p in (0, 1, 2)}


def test_a_broker_that_does_not_answer_means_no_copy_is_reported(tmp_path):
    app = _app(tmp_path)
    tp = TP(_changelog("state-0"), 2)
    app.tables[TABLES[0]].data.set_persisted_offset(tp, 9)
    app.tables[TABLES[0]].data._dbs[2].close()
    assert local_offsets(_app(tmp_path)) == {tp: 9}
    assert restored_copies(_app(tmp_path), "localhost:1", timeout_s=1.0) == {}
