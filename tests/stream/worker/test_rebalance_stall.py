"""A worker that outlives a SIGKILLed peer takes its partitions over from a copy it kept, exactly.

The stall after a kill was the takeover reading the dead worker's changelog
partitions from the start (Tansu never compacts them, so the read grows with
the stream's age: 43-48 s reported with two workers). With standby replicas
each worker keeps every other partition's state up to date from the
changelogs, so the takeover starts from that copy. How long the stall lasts
is measured by `sluice chaos` (stall_s), not here; this checks the copy is
there and complete before the kill, and that what is computed from it after
the kill equals the offline path.
"""

from __future__ import annotations

import time
from pathlib import Path

from features.feast_repo import load_plan, open_store
from stream.kafka.reader import read_topic
from stream.worker.standby import STANDBY_BATCH
from tests.stream.worker.replay import Replay

#: Faust's RocksDB store keeps the changelog offset each partition database holds under this key.
OFFSET_KEY = b"__faust\0offset__"


def _last_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Per changelog partition, the offset of its last record."""
    last: dict[int, int] = {}
    for m in read_topic(bootstrap, topic, idle_s=3, timeout_s=120):
        last[m.partition()] = max(last.get(m.partition(), -1), m.offset())
    return last


def _behind(held: dict[int, int | None], last: dict[int, int]) -> int:
    """Changelog records a copy has not applied, over a table's partitions (a missing copy has applied none)."""
    return sum(max(0, last[p] - (-1 if held.get(p) is None else held[p])) for p in last)


def _held_offsets(data_dir: Path, table: str, partitions: int) -> dict[int, int | None]:
    """Per partition, the changelog offset a worker's RocksDB copy of `table` holds (read-only, while it runs)."""
    from rocksdict import AccessType, Options, Rdict

    held: dict[int, int | None] = {}
    for p in range(partitions):
        found = list(data_dir.rglob(f"{table}-{p}.db"))
        if not found:
            held[p] = None
            continue
        db = Rdict(str(found[0]), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            raw = db.get(OFFSET_KEY)
        finally:
            db.close()
        held[p] = None if raw is None else int(raw)
    return held


def test_a_survivor_takes_over_a_killed_peer_from_its_standby_copy_exactly(broker, own_topic_repo, start_worker, unique, tmp_path):
    bootstrap = broker.bootstrap_servers
    app_id = unique("standby")
    # The arrival clock's bound far beyond the test: a rebalance that waited for it (the survivor's joining
    # and the takeover both waited 30 s for records the merge held, then released them out of order) stalls
    # the stream past the reads' windows instead of passing with features that depend on timing.
    env = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog"), "SLUICE_STANDBY_REPLICAS": "1",
           "SLUICE_CLOCK_WAIT_MS": "900000"}
    replay = Replay(own_topic_repo, bootstrap, env["SLUICE_PREDICTIONS_TOPIC"])
    payloads, produce, predicted = replay.payloads, replay.produce, replay.predicted
    third = len(payloads) // 3

    doomed = start_worker(own_topic_repo, env={**env, "SLUICE_DATA_DIR": str(tmp_path / "doomed")}, app_id=app_id)
    produce(payloads[:third])
    assert predicted(third) == third
    survivor_dir = tmp_path / "survivor"
    start_worker(own_topic_repo, env={**env, "SLUICE_DATA_DIR": str(survivor_dir)}, app_id=app_id)
    produce(payloads[third : 2 * third])
    assert predicted(2 * third) == 2 * third

    # Before the kill, the survivor's copy of every partition of every table
    # (its own and the doomed worker's) lacks at most one standby batch of
    # the table's changelog (Faust applies a standby's records a batch at a time).
    plan = load_plan(open_store(own_topic_repo["path"]))
    tables = [f"state-{stage}" for stage in range(len(plan.stages()))]
    last = {t: _last_offsets(bootstrap, f"{app_id}-{t}-changelog") for t in tables}
    behind: dict = {}
    deadline = time.monotonic() + 60  # standby reads run behind the writes; wait for them, do not time them
    while time.monotonic() < deadline:
        behind = {t: _behind(_held_offsets(survivor_dir, t, 4), last[t]) for t in tables}
        if all(n < STANDBY_BATCH for n in behind.values()):
            break
        time.sleep(1.0)
    assert all(n < STANDBY_BATCH for n in behind.values()), f"changelog records the survivor's copies lack, by table: {behind}"

    doomed.kill()
    produce(payloads[2 * third :])
    replay.assert_exact(app_id, env["SLUICE_PREDICTION_LOG_TOPIC"])
