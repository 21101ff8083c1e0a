"""Declarations Sluice cannot compute exactly are refused at start, naming the feature and the fix."""

from __future__ import annotations

import pytest

from features.errors import UnsupportedFeatureError
from features.spec import make_agg

DAY = 86_400_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("median", "amount", 60_000, None), "function 'median' is not supported"),
        (("sum", "amount", 0, None), "time_window is missing"),
        (("sum", "amount", 31 * DAY, None), "exceeds 30 days"),
        (("sum", "amount", 60_000, 7_000), "slide_interval must divide time_window"),
        (("sum", "amount", 60_000, 120_000), "slide_interval must divide time_window"),
    ],
)
def test_unsupported_declarations_fail_with_the_feature_name(args, message):
    with pytest.raises(UnsupportedFeatureError, match=message) as info:
        make_agg("card_txn", "amount_x", *args)
    assert "card_txn:amount_x" in str(info.value)


@pytest.mark.parametrize("alias", ["avg", "stddev", "variance", "COUNT_DISTINCT"])
def test_feast_spellings_map_to_one_function(alias):
    agg = make_agg("v", "f", alias, "amount", 60_000, None)
    assert agg.function in {"mean", "std", "var", "count_distinct"}


def test_slide_equal_to_window_is_an_exact_sliding_window_and_smaller_is_hopping():
    assert not make_agg("v", "f", "sum", "amount", DAY, DAY).hopping
    assert not make_agg("v", "f", "sum", "amount", DAY, None).hopping
    assert make_agg("v", "f", "sum", "amount", 30 * DAY, DAY).hopping
    assert make_agg("v", "f", "sum", "amount", 1000, None).window_ms == 1000
