"""Features computed from the events archive equal the served ones: a real worker, a real broker, `sluice archive`.

The comparison here is parity's (stream.tools.parity.differs), not the skew
module's, so that `sluice skew` is checked against an independent one.
"""

from __future__ import annotations

from features.offline import compute_features
from stream.lifecycle.archive_history import read_archive
from stream.lifecycle.skew import stream_features
from stream.tools.parity import differs
from tests.stream.archived_runs import ArchivedRun, offline_by_arrival

def _mismatches(run: ArchivedRun, stages: set[int]) -> tuple[int, int, list]:
    """(values compared, mismatches, examples) of the stream features of `stages`, every logged event."""
    history = read_archive(run.archive, run.plan)
    assert history.messages - history.ticks == run.messages
    assert len(history.frame) == run.events  # the dead letters are in the archive, but in no window
    offline = compute_features(run.plan, history.frame)
    assert offline.scored.all()  # the disorder is within the allowed lateness
    by_place = offline_by_arrival(run, history.frame, offline.frame)
    integral = {f"{v.name}__{a.name}": a.function in ("count", "count_distinct") for v in run.plan.stream_views for a in v.aggs}
    names = [name for name, stage in stream_features(run.plan) if stage in stages]
    assert names
    compared, bad, examples = 0, 0, []
    assert len(run.log) == run.events
    for record in run.log:
        offline_values = by_place[tuple(record["arrival"][0])]
        for name in names:
            compared += 1
            wrong, _, _ = differs(record["features"][name], float(offline_values[name]), integral[name])
            if wrong:
                bad += 1
                examples.append((record["transaction_id"], name, record["features"][name], offline_values[name]))
    return compared, bad, examples[:5]


def test_stage_0_features_from_the_archive_equal_the_served_ones_over_four_partitions(archived_run_4):
    compared, bad, examples = _mismatches(archived_run_4, {0})
    assert compared > 10_000
    assert bad == 0, examples


def test_every_feature_from_the_archive_equals_the_served_one_on_one_partition(archived_run_1):
    compared, bad, examples = _mismatches(archived_run_1, {0, 1})
    assert compared > 10_000
    assert bad == 0, examples


def test_every_feature_after_the_hop_follows_the_arrival_clock_over_four_partitions(archived_run_4):
    compared, bad, examples = _mismatches(archived_run_4, {1})
    assert compared > 1_000
    assert bad == 0, examples
