"""The skew comparison: served values against the archive in arrival and in event-time order (no broker)."""

from __future__ import annotations

import dataclasses

import numpy as np

from features.offline import compute_features
from stream.lifecycle.archive_history import read_archive
from stream.lifecycle.skew import differences, skew, table
from tests.features.conftest import PLAN
from tests.stream.lifecycle.test_archive_history import _archive

VECTOR_PLAN = dataclasses.replace(PLAN, vector=("cv__n", "cv__s", "mv__n"))


def _served(history, values) -> list[dict]:
    """Log records as the worker writes them: the vector by name, where the event arrived."""
    records = []
    for (_, row), vector in zip(history.iterrows(), values.to_dict("records")):
        records.append({"features": {k: (None if np.isnan(v) else v) for k, v in vector.items()},
                        "arrival": [[int(row["partition"]), int(row["offset"])]]})
    return records


def test_served_arrival_order_values_have_no_skew_and_event_time_values_do(tmp_path):
    history = read_archive(_archive(tmp_path).root, VECTOR_PLAN).frame
    served = _served(history, compute_features(VECTOR_PLAN, history).frame)
    served.append({"features": {}, "arrival": [[7, 0]]})  # an event the archive does not hold
    report = skew(VECTOR_PLAN, history, served)
    assert (report.records, report.compared, report.missing) == (6, 5, 1)
    by_name = {f.feature: f for f in report.features}
    assert [f.feature for f in report.features] == ["cv__n", "cv__s", "mv__n"]
    assert all(f.arrival.differing == 0 and f.arrival.mean_abs is None for f in report.features)
    # d and e count b in event-time order: 2 of 5 merchant counts, each one too many.
    merchant = by_name["mv__n"].event_time
    assert (merchant.differing, merchant.share, merchant.mean_abs, merchant.p99_abs) == (2, 0.4, 1.0, 1.0)
    assert by_name["mv__n"].stage == 1 and by_name["cv__n"].event_time.differing == 0
    assert len(table(report)) == 4 and "40.00%" in table(report)[3]


def test_a_served_value_off_by_a_little_is_counted_with_its_size(tmp_path):
    history = read_archive(_archive(tmp_path).root, VECTOR_PLAN).frame
    values = compute_features(VECTOR_PLAN, history).frame
    values.loc[values.index[0], "cv__s"] = 1e-12  # within 1e-9: the same value
    values.loc[values.index[1], "cv__n"] += 3
    values.loc[values.index[2], "mv__n"] = np.nan  # missing against present
    report = {f.feature: f.arrival for f in skew(VECTOR_PLAN, history, _served(history, values)).features}
    assert report["cv__s"].differing == 0
    assert (report["cv__n"].differing, report["cv__n"].mean_abs) == (1, 3.0)
    assert (report["mv__n"].differing, report["mv__n"].mean_abs) == (1, None)


def test_differences_counts_exactly_for_counts_and_within_a_tolerance_otherwise():
    served = np.array([1.0, 2.0, np.nan, 4.0 + 1e-12])
    offline = np.array([1.0, 3.0, np.nan, 4.0])
    assert differences(served, offline, integral=False).differing == 1
    assert differences(served, offline, integral=True).differing == 2
    assert differences(served[:0], offline[:0], integral=True).share == 0.0
