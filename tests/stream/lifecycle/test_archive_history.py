"""Reading the events archive back as a history in arrival order (no broker: archives written by EventsArchive)."""

from __future__ import annotations

import orjson
import pytest

from features.offline import compute_features, offset_col, partition_col
from stream.lifecycle.archive import EventsArchive, day_of
from stream.lifecycle.archive_history import ARRIVAL_ARCHIVE, EVENT_TIME, order_of, read_archive
from tests.features.conftest import PLAN

DAY_MS = 86_400_000
T0 = 1_796_000_000_000  # an instant well inside one UTC day


def _message(offset: int, broker_ms: int, event_id: str, card: str, merch: str, t_ms: int, *, key: str | None = None):
    event = {"id": event_id, "card": card, "merch": merch, "amount": 1.0, "t": t_ms}
    return offset, broker_ms, (card if key is None else key).encode(), orjson.dumps(event)


def _archive(tmp_path) -> EventsArchive:
    """Two partitions; merchant m1 sees events from both, in an order only the arrival clock decides."""
    archive = EventsArchive(tmp_path / "archive")
    archive.write(0, [
        _message(0, T0 + 100, "a", "c0", "m1", T0),
        _message(1, T0 + 500, "b", "c0", "m1", T0 + 3),  # happened before d and e, arrived after
        _message(2, T0 + 200, "c", "c0", "m1", T0 + 20),  # broker time went back: its clock stays at 500
        _message(3, T0 + 600, "bad", "c0", "m1", T0 + 30, key="c9"),  # wrong Kafka key: dead-lettered
    ])
    archive.write(1, [
        _message(0, T0 + 300, "d", "c1", "m1", T0 + 5),
        _message(1, T0 + 400, "e", "c1", "m1", T0 + 6),
        (2, T0 + 450, b"c1", b"not json"),
    ])
    return archive


def test_each_stage_gets_the_arrival_order_of_the_archive(tmp_path):
    archive = _archive(tmp_path)
    history = read_archive(archive.root, PLAN)
    frame = history.frame.set_index("id")
    assert (history.messages, history.rejected, len(frame)) == (7, 2, 5)
    assert history.order == ARRIVAL_ARCHIVE
    # Stage 0: the message's own place.
    assert frame[partition_col(0)].to_dict() == {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}
    assert frame[offset_col(0)].to_dict() == {"a": 0, "b": 1, "c": 2, "d": 0, "e": 1}
    # Stage 1: clocks a 100, b 500, c 500, d 300, e 400 -> a, d, e, b, c.
    assert frame.sort_values(offset_col(1)).index.tolist() == ["a", "d", "e", "b", "c"]
    assert set(frame[partition_col(1)]) == {0}

    offline = compute_features(PLAN, history.frame)
    merchant = dict(zip(history.frame["id"], offline.frame["mv__n"]))
    # Each merchant count holds the m1 events that arrived before, in its window [t - 10 s, t): d and e
    # arrived before b, so they do not count it; b does not count them (they happened after it).
    assert merchant == {"a": 0, "d": 1, "e": 2, "b": 1, "c": 4}
    card = dict(zip(history.frame["id"], offline.frame["cv__n"]))
    assert card == {"a": 0, "b": 1, "c": 2, "d": 0, "e": 1}


def test_a_plain_history_is_in_event_time_order(tmp_path):
    frame = read_archive(_archive(tmp_path).root, PLAN).frame
    plain = frame.drop(columns=[c for c in frame if c.startswith("_")])
    assert order_of(plain) == EVENT_TIME
    offline = compute_features(PLAN, plain)
    # In event-time order d and e count b, which serving had not seen yet.
    merchant = dict(zip(plain["id"], offline.frame["mv__n"]))
    assert merchant == {"a": 0, "b": 1, "d": 2, "e": 3, "c": 4}
    card = dict(zip(plain["id"], offline.frame["cv__n"]))
    assert card == {"a": 0, "b": 1, "c": 2, "d": 0, "e": 1}


def test_a_day_range_keeps_the_clock_of_the_whole_partition(tmp_path):
    archive = EventsArchive(tmp_path / "archive")
    archive.write(0, [
        _message(0, T0 + DAY_MS, "late-day", "c0", "m1", T0),  # the next day, first in the partition
        _message(1, T0 + 100, "x", "c0", "m1", T0 + 1),  # clock: the next day's broker time
    ])
    archive.write(1, [_message(0, T0 + 200, "y", "c1", "m1", T0 + 2)])
    day = day_of(T0)
    history = read_archive(archive.root, PLAN, first_day=day, last_day=day)
    frame = history.frame.set_index("id")
    assert set(frame.index) == {"x", "y"}
    # x's clock is the next day's broker time of offset 0 (not in the range): y arrives first.
    assert frame.sort_values(offset_col(1)).index.tolist() == ["y", "x"]
    with pytest.raises(FileNotFoundError, match="no archived events"):
        read_archive(archive.root, PLAN, first_day="2030-01-01")
