"""The reference distributions in model.json: the contract's format, checked against a direct count."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.lifecycle.reference import MAX_CATEGORIES, reference


def count_between(values, edges) -> list[int]:
    """Counts per bin [edge_i, edge_i+1), the first from -inf and the last to +inf: bin = searchsorted(..., "right")."""
    bounds = [-np.inf, *edges, np.inf]
    return [int(((values >= lo) & (values < hi)).sum()) for lo, hi in zip(bounds, bounds[1:])]


def test_numeric_categorical_and_missing_columns_as_the_contract_says():
    rng = np.random.default_rng(3)
    n = 1000
    amount = rng.lognormal(3, 1, n)
    amount[:50] = np.nan
    count = rng.integers(0, 5, n).astype(float)  # integers, 5 values: categorical
    many = rng.integers(0, 100, n).astype(float)  # integers, 100 values: numeric
    flag = (rng.random(n) < 0.3).astype(float)
    empty = np.full(n, np.nan)
    matrix = np.column_stack([amount, count, many, flag, empty])
    names = ["amount", "count", "many", "flag", "empty"]
    scores = rng.random(n)
    ref = json.loads(json.dumps(reference(matrix, names, scores)))  # it is JSON as it is (no NaN)

    assert ref["rows"] == n
    a = ref["features"]["amount"]
    present = amount[~np.isnan(amount)]
    assert a["kind"] == "numeric" and a["missing"] == 50 and len(a["edges"]) == 9
    assert a["edges"] == pytest.approx(list(np.quantile(present, np.arange(1, 10) / 10)), rel=1e-12)
    assert a["counts"] == count_between(present, a["edges"]) and sum(a["counts"]) == 950
    assert (a["min"], a["max"]) == (present.min(), present.max())

    c = ref["features"]["count"]
    assert c == {"kind": "categorical", "missing": 0, "counts": {str(v): int((count == v).sum()) for v in range(5)}}
    assert set(ref["features"]["flag"]["counts"]) == {"0", "1"}  # "1", never "1.0"
    assert ref["features"]["many"]["kind"] == "numeric"
    assert ref["features"]["empty"] == {"kind": "numeric", "edges": [], "counts": [0], "missing": n, "min": None, "max": None}
    assert ref["score"]["kind"] == "numeric" and ref["score"]["missing"] == 0 and sum(ref["score"]["counts"]) == n
    assert "contributions" not in ref


def test_few_distinct_values_give_fewer_bins_not_empty_duplicates():
    values = np.array([1.5] * 85 + [2.5] * 10 + [9.25] * 5)  # deciles 1-8 are 1.5, the 9th is 2.5
    entry = reference(values[:, None], ["x"], np.zeros(len(values)))["features"]["x"]
    assert entry["edges"] == [1.5, 2.5] and entry["counts"] == count_between(values, [1.5, 2.5]) == [0, 85, 15]


def test_integers_are_categorical_up_to_the_limit_and_a_declared_type_decides_first():
    at_limit = np.arange(MAX_CATEGORIES * 10, dtype=float) % MAX_CATEGORIES
    over = np.arange(MAX_CATEGORIES * 10, dtype=float) % (MAX_CATEGORIES + 1)
    fraction = at_limit + 0.5
    matrix = np.column_stack([at_limit, over, fraction, fraction])
    ref = reference(matrix, ["at", "over", "fraction", "declared"], np.zeros(len(matrix)), categorical={"declared"})
    kinds = {name: entry["kind"] for name, entry in ref["features"].items()}
    assert kinds == {"at": "categorical", "over": "numeric", "fraction": "numeric", "declared": "categorical"}
    assert ref["features"]["declared"]["counts"]["0.5"] == 10


def test_contributions_drop_lightgbms_bias_column_and_rank_by_mean_absolute_value():
    contrib = np.array([[0.1, -2.0, 0.0, 5.0], [0.3, 1.0, 0.0, 5.0]])  # last column: the bias
    ref = reference(np.zeros((2, 3)), ["a", "b", "c"], np.zeros(2), contrib)
    assert ref["contributions"] == pytest.approx({"a": 0.2, "b": 1.5, "c": 0.0})
    assert ref["contribution_rank"] == ["b", "a", "c"]
    with pytest.raises(ValueError, match="one column per feature"):
        reference(np.zeros((2, 3)), ["a", "b", "c"], np.zeros(2), np.zeros((2, 7)))
    with pytest.raises(ValueError, match="does not match"):
        reference(np.zeros((2, 3)), ["a", "b"], np.zeros(2))
