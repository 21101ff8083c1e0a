"""The chaos figures from timestamps and offsets: stalls after faults, commit lag, replays per kill."""

from __future__ import annotations

from stream.tools.fault_figures import Fault, Timeline, commit_lags, longest_gap_s, replays, stall_by_kind, stalls


def _every(start_ms: int, stop_ms: int, step_ms: int = 100) -> list[int]:
    return list(range(start_ms, stop_ms, step_ms))


def test_the_stall_is_the_gap_a_partition_had_after_the_fault_not_the_time_before_it():
    timeline = Timeline()
    timeline.predictions[0] = _every(0, 30_000)  # never stops
    timeline.predictions[1] = _every(0, 10_050) + _every(22_000, 30_000)  # silent from 10.0 s to 22.0 s
    kill = Fault("kill", 12_000)  # lands inside the gap: counts from the kill
    join = Fault("join", 25_000)
    faults = [join, kill]
    stalls(faults, timeline, flowing_until_ms=30_000)
    assert kill.stall_s == 10.0
    assert join.stall_s == 0.1
    assert stall_by_kind(faults) == {"join": 0.1, "kill": 10.0}


def test_a_partition_silent_until_the_stream_ends_stalls_until_then_and_a_gap_after_a_later_fault_is_not_charged():
    timeline = Timeline()
    timeline.predictions[0] = _every(0, 5_000)
    timeline.predictions[1] = _every(0, 20_000) + [40_000]  # its gap starts after the next fault
    pause = Fault("broker_pause", 4_000)
    leave = Fault("leave", 15_000)
    stalls([pause, leave], timeline, flowing_until_ms=25_000)
    assert pause.stall_s == 10.1  # partition 0: last prediction at 4.9 s, until the leave (partition 1's gap is the leave's)
    assert leave.stall_s == 10.0  # partition 0 from the leave (15 s) to 25 s; partition 1 from 19.9 s: 5.1
    assert longest_gap_s(timeline, flowing_until_ms=25_000) == 20.1  # partition 0, whichever fault it belongs to


def test_a_gap_the_next_fault_opens_is_that_faults_not_the_one_before():
    # As measured: a 3 s broker pause, predictions flowing again after it, then a kill 7.7 s after the pause.
    # Both partitions' last prediction before the kill is a few tens of ms before it; the gap after it is the kill's.
    timeline = Timeline()
    timeline.predictions[0] = _every(0, 3_000, 50) + _every(6_200, 12_700, 50) + _every(37_400, 45_000, 50)
    timeline.predictions[1] = _every(0, 3_000, 50) + _every(6_300, 12_700, 50) + _every(30_000, 45_000, 50)
    pause = Fault("broker_pause", 3_000)
    kill = Fault("kill", 10_700 + 2_000)
    stalls([pause, kill], timeline, flowing_until_ms=45_000)
    assert pause.stall_s == 3.3  # partition 1: 2.95 s to 6.3 s (from the pause: 3.3 s), not the kill's gap
    assert kill.stall_s == 24.7  # partition 0: from the kill (12.7 s) to 37.4 s
    assert kill.line()["gap"] == {"partition": 0, "from_s": -0.1, "to_s": 24.7}  # whose gap, and where it began and ended
    assert pause.line()["gap"]["partition"] == 1
    assert longest_gap_s(timeline, flowing_until_ms=45_000) == 24.75


def test_commit_lag_and_what_a_kill_makes_the_group_read_again():
    timeline = Timeline()
    # Events topic partition 0: offsets 0..99 processed one per 100 ms; stage 1 partition 0: 0..49 one per 200 ms.
    timeline.processed[(0, 0)] = [(100 * k, k) for k in range(100)]
    timeline.processed[(1, 0)] = [(200 * k, k) for k in range(50)]
    samples = [(1_000, {(0, 0): None, (1, 0): None}), (5_000, {(0, 0): 40, (1, 0): 20}), (9_950, {(0, 0): 100, (1, 0): 50})]
    assert commit_lags(samples, timeline) == [11, 11, 0]  # 11 processed, nothing committed; 51 - 40; all committed
    timeline.repeats = [6_500, 7_000, 20_000]
    kill, join = Fault("kill", 6_000), Fault("join", 8_000)
    replays([kill, join], samples, timeline)
    assert kill.reread == (61 - 40) + (31 - 20)
    assert kill.duplicates == 2


def test_late_records_and_dead_letters_are_outcomes_a_stall_waits_for_like_predictions():
    # As measured with the hostile corpus: partition 0's stream time jumped ahead, so its events went to the
    # late topic for 40 s, one by one as they came, while partition 1 stalled 4 s in a rebalance.
    timeline = Timeline()
    timeline.predictions[0] = _every(0, 5_000, 50) + _every(45_000, 60_000, 50)
    timeline.settled[0] = _every(5_000, 45_000, 50)
    timeline.predictions[1] = _every(0, 20_000, 50) + _every(24_000, 60_000, 50)
    join = Fault("join", 19_000)
    stalls([join], timeline, flowing_until_ms=60_000)
    assert join.stall_s == 4.05
    assert join.gap[0] == 1
    assert longest_gap_s(timeline, flowing_until_ms=60_000) == 4.05
