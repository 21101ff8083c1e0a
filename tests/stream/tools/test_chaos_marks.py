"""When `sluice chaos` lets the next fault land: after every events partition moved past commits sampled after the last one."""

from __future__ import annotations

from stream.tools.audit import ChaosReport
from stream.tools.chaos import _Run
from stream.tools.group_watch import GroupWatch


def _run() -> tuple[_Run, GroupWatch]:
    watch = GroupWatch("localhost:9", "group", ["events"], [])  # never started: samples are set by hand
    run = _Run(make=None, broker_pid=None, pause_s=3.0, report=ChaosReport(), watch=watch, log=print)
    run.primary.proc, run.primary._waiting = object(), False  # a worker holding its partitions
    return run, watch


def test_a_killed_workers_last_commits_do_not_count_as_the_group_moving_on():
    run, watch = _run()
    watch.samples.append((9_500, {(0, 0): 100, (0, 1): 100}))
    run.settle_from(10_000)  # worker a (partition 1) is SIGKILLed at 10.0 s
    assert not run.recovered()  # no sample after the kill has settled yet
    watch.samples.append((10_400, {(0, 0): 100, (0, 1): 120}))  # a's last commit, sent just before it died
    assert not run.recovered()
    watch.samples.append((11_600, {(0, 0): 100, (0, 1): 120}))  # the mark
    watch.samples.append((12_600, {(0, 0): 101, (0, 1): 120}))  # partition 0 moves on; partition 1 has no owner yet
    assert not run.recovered()
    watch.samples.append((20_000, {(0, 0): 140, (0, 1): 121}))  # the restarted worker commits partition 1
    assert run.recovered()


def test_no_fault_yet_and_a_worker_not_ready():
    run, watch = _run()
    assert run.recovered()  # before the first fault nothing to wait for
    run.primary._waiting = True
    assert not run.recovered()
