"""A SIGKILLed worker restarted on its data directory takes its partitions back at its first rebalance.

With warm moves, a partition moves to a worker only once its copy of the
partition's state is caught up. A restarted worker's copies are on its disk
(RocksDB, with the changelog offset each holds), behind only by what its
peer wrote after the takeover; reported as caught up when it rejoins
(stream.worker.restored), its partitions move back in the rebalance its
join starts, not two rebalances later after a warm-up. Each worker's
`sluice.rebalance` timeline (info level) says what it was assigned.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.stream.worker.replay import Replay

ASSIGNED = re.compile(r"rebalance: \+[\d.]+ s assigned \(generation \d+\): (?P<streams>.*); standby changelog partitions")


def _assignments(log_text: str) -> list[set[str]]:
    """The stream partitions of each assignment in a worker's log, in order (an empty set: none)."""
    found = []
    for m in ASSIGNED.finditer(log_text):
        streams = m["streams"]
        found.append(set() if streams == "no stream partitions" else set(streams.split(", ")))
    return found


def test_a_restarted_worker_takes_its_partitions_back_in_the_rebalance_its_join_starts(
    broker, own_topic_repo, start_worker, unique, tmp_path,
):
    bootstrap = broker.bootstrap_servers
    app_id = unique("rejoin")
    # SLUICE_CLOCK_WAIT_MS: see test_rebalance_stall (a stage waits for the dead worker's partitions instead of
    # letting records go out of arrival order, so that features are a function of the log here too).
    env = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog"),
           "SLUICE_LOG_LEVEL": "info", "SLUICE_CLOCK_WAIT_MS": "900000"}
    replay = Replay(own_topic_repo, bootstrap, env["SLUICE_PREDICTIONS_TOPIC"])
    payloads, produce, predicted = replay.payloads, replay.produce, replay.predicted
    quarter = len(payloads) // 4

    start_worker(own_topic_repo, env={**env, "SLUICE_DATA_DIR": str(tmp_path / "survivor")}, app_id=app_id)
    produce(payloads[:quarter])
    assert predicted(quarter) == quarter
    doomed = start_worker(own_topic_repo, env={**env, "SLUICE_DATA_DIR": str(tmp_path / "doomed")}, app_id=app_id)
    produce(payloads[quarter : 2 * quarter])
    assert predicted(2 * quarter) == 2 * quarter
    owned = _assignments(Path(doomed.log_path).read_text(errors="replace"))[-1]
    assert owned, "the second worker never took partitions over (its warm move did not happen)"

    doomed.kill()
    # The survivor takes everything over and writes on: the killed worker's copies fall behind.
    produce(payloads[2 * quarter : 3 * quarter])
    assert predicted(3 * quarter) == 3 * quarter
    before_restart = Path(doomed.log_path).stat().st_size
    doomed.start().wait_ready(timeout_s=180)
    with open(doomed.log_path, "rb") as log:
        log.seek(before_restart)
        restarted = log.read().decode(errors="replace")
    assert _assignments(restarted)[0] == owned, restarted[-3000:]
    assert "catching up on" not in restarted  # no warm-up: nothing waits for a second rebalance
    assert "reported as caught up" in restarted

    produce(payloads[3 * quarter :])
    replay.assert_exact(app_id, env["SLUICE_PREDICTION_LOG_TOPIC"])
