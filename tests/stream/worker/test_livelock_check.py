"""Faust's livelock check skips a partition that aiokafka is still resetting (it has no position yet).

aiokafka's `TopicPartitionState.position` asserts that a position is set;
a partition sought back to its start has none until its next fetch, and
Faust's check, run every 1.25 s, ended the worker on that assertion.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from faust.types.tuples import TP

from stream.worker.consumer import ShortFetchConsumerThread


def _thread_with(state) -> SimpleNamespace:
    assignment = SimpleNamespace(state_value=lambda tp: state)
    consumer = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=SimpleNamespace(
        subscription=SimpleNamespace(assignment=assignment))))
    return SimpleNamespace(_ensure_consumer=lambda: consumer)


def test_a_partition_being_reset_is_skipped_and_one_with_a_position_goes_to_faust():
    tp = TP("events", 0)
    # aiokafka's TopicPartitionState answers `has_valid_position` from the position its `position` asserts on.
    resetting = SimpleNamespace(has_valid_position=False)
    assert ShortFetchConsumerThread.verify_event_path(_thread_with(resetting), 0.0, tp) is None

    placed = SimpleNamespace(has_valid_position=True)
    # A partition with a position goes on to Faust's own check (which needs a real consumer thread: here it
    # refuses the stand-in, which shows it was reached).
    with pytest.raises(TypeError):
        ShortFetchConsumerThread.verify_event_path(_thread_with(placed), 0.0, tp)
