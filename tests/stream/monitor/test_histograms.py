"""Binning by the reference format, and rings of sub-window counts: A + B merged equals one pass."""

from __future__ import annotations

import numpy as np
import pytest

from stream.lifecycle.reference import categorical_entry as categorical_spec
from stream.lifecycle.reference import category_key
from stream.lifecycle.reference import numeric_entry as numeric_spec
from stream.monitor.baseline import compute_reference
from stream.monitor.histograms import Binning, Layout, Ring


def test_numeric_bins_are_searchsorted_right_with_a_missing_bin():
    spec = {"kind": "numeric", "edges": [1.0, 2.0, 5.0], "counts": [1, 2, 3, 4], "missing": 7, "min": 0.0, "max": 9.0}
    b = Binning.from_reference("x", spec)
    values = np.array([0.5, 1.0, 1.5, 2.0, 4.9, 5.0, 100.0, np.nan])
    assert b.codes(values).tolist() == [0, 1, 1, 2, 2, 3, 3, 4]
    assert b.reference.tolist() == [1, 2, 3, 4, 7]
    assert b.out_of_range(values).tolist() == [False] * 6 + [True, False]


def test_categorical_bins_name_integers_without_a_fraction_and_count_unseen_apart():
    spec = {"kind": "categorical", "counts": {"0": 5, "1": 3, "3": 1}, "missing": 2}
    b = Binning.from_reference("n", spec)
    values = np.array([0.0, 1.0, 3.0, 2.0, np.nan, 1.0])
    # bins: "0", "1", "3", unseen, missing
    assert b.codes(values).tolist() == [0, 1, 2, 3, 4, 1]
    assert b.reference.tolist() == [5, 3, 1, 0, 2]
    assert b.codes(np.array(["1", "x", None], dtype=object)).tolist() == [1, 3, 4]
    assert category_key(3.0) == "3" and category_key(2.5) == "2.5" and category_key("US") == "US"


def test_a_reference_of_rows_follows_the_contract():
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000)
    x[:10] = np.nan
    spec = numeric_spec(x)
    assert len(spec["edges"]) == 9 and len(spec["counts"]) == 10 and spec["missing"] == 10
    edges = np.array(spec["edges"])
    present = x[~np.isnan(x)]
    assert np.bincount(np.searchsorted(edges, present, side="right"), minlength=10).tolist() == spec["counts"]
    assert spec["min"] == present.min() and spec["max"] == present.max()
    assert categorical_spec(np.array([1.0, 1.0, 2.0, np.nan])) == {"kind": "categorical", "counts": {"1": 2, "2": 1}, "missing": 1}
    ref = compute_reference(np.column_stack([x, rng.integers(0, 4, 1000)]), ["x", "k"], rng.random(1000))
    assert ref["features"]["x"]["kind"] == "numeric" and ref["features"]["k"]["kind"] == "categorical"
    assert ref["rows"] == 1000 and ref["score"]["kind"] == "numeric"


def _events(rng, n: int):
    bucket = rng.integers(0, 40, n)
    slots = rng.integers(-1, 30, (n, 3))
    return bucket, slots


def _one_pass(bucket, slots, length, width=30):
    ring = Ring(width, length)
    for lo in range(0, len(bucket), 97):  # micro-batches, in arrival order
        ring.add(bucket[lo : lo + 97], slots[lo : lo + 97])
    return ring


@pytest.mark.parametrize("seed", range(4))
def test_two_rings_merged_equal_one_pass_over_all_events(seed):
    rng = np.random.default_rng(seed)
    bucket, slots = _events(rng, 5000)
    # Arrival order roughly follows time, with disorder: some events arrive after their sub-window left the ring.
    order = np.argsort(bucket + rng.normal(0, 3, len(bucket)), kind="stable")
    bucket, slots = bucket[order], slots[order]
    part = rng.random(len(bucket)) < 0.4  # partition A or B
    whole = _one_pass(bucket, slots, length=6)
    merged = _one_pass(bucket[part], slots[part], 6).merge(_one_pass(bucket[~part], slots[~part], 6))
    assert merged.newest == whole.newest
    assert sorted(merged.buckets) == sorted(whole.buckets)
    for b in whole.buckets:
        assert merged.buckets[b].tolist() == whole.buckets[b].tolist()
    for last in range(whole.newest - 8, whole.newest + 1):
        assert merged.total(last).tolist() == whole.total(last).tolist()


def test_a_window_total_counts_exactly_its_sub_windows():
    rng = np.random.default_rng(5)
    bucket, slots = _events(rng, 3000)
    bucket = np.sort(bucket)
    ring = _one_pass(bucket, slots, length=5)
    last = ring.newest
    inside = (bucket > last - 5) & (bucket <= last)
    expected = np.bincount(slots[inside][slots[inside] >= 0], minlength=30)
    assert ring.total(last).tolist() == expected.tolist()


def test_memory_is_bounded_by_sub_windows_not_events():
    ring = Ring(100, 24)
    rng = np.random.default_rng(1)
    for step in range(200):
        ring.add(np.full(1000, step), rng.integers(0, 100, (1000, 4)))
    assert len(ring.buckets) == 24
    assert ring.nbytes == 24 * 100 * 8
    # Events of a sub-window that left the ring are dropped, and counted.
    assert ring.add(np.array([10, 199]), np.array([[1], [2]])) == 1


def test_value_rings_sum_rows_per_sub_window():
    ring = Ring(3, 4, np.float64)
    ring.add_values(np.array([0, 0, 1]), np.array([[1.0, 2.0, 1.0], [3.0, 4.0, 1.0], [5.0, 6.0, 1.0]]))
    assert ring.total(1).tolist() == [9.0, 12.0, 3.0]
    assert ring.total(0).tolist() == [4.0, 6.0, 2.0]


def test_a_layout_puts_columns_and_counters_side_by_side():
    a = Binning.from_reference("a", {"kind": "numeric", "edges": [0.0], "counts": [1, 1], "missing": 0})
    b = Binning.from_reference("b", {"kind": "categorical", "counts": {"x": 1}, "missing": 0})
    layout = Layout([a, b], ["events", "other"])
    assert layout.offsets.tolist() == [0, 3] and layout.counters == {"events": 6, "other": 7} and layout.width == 8
    slots = layout.slots([np.array([-1.0, 1.0]), np.array(["x", "y"], dtype=object)])
    assert slots.tolist() == [[0, 3], [1, 4]]


def test_an_all_missing_numeric_reference_loads_with_no_range():
    # JSON has no NaN: the reference of a column that was always missing says "min": null.
    b = Binning.from_reference("empty", {"kind": "numeric", "edges": [], "counts": [0], "missing": 7, "min": None, "max": None})
    assert b.n_bins == 2 and np.isnan(b.low) and np.isnan(b.high)
