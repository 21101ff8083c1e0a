"""What path attribution (Saabas) is, next to TreeSHAP, checked against Shapley values by brute force.

On small real LightGBM trees the Shapley values are computed the slow way:
every subset S of the features, with the tree-path-dependent value function
TreeSHAP uses, v(S) = the tree's output when features in S follow the row
and the others follow both children, weighted by the children's training
counts. LightGBM's `pred_contrib` must equal them. Path attribution must
equal something narrower: in each tree, the marginal contributions along
one ordering only, the order in which the row's path meets the features.
Where the two differ (interactions) the AND tree below gives exact numbers.
"""

from __future__ import annotations

import math
from itertools import combinations

import lightgbm as lgb
import numpy as np
import pytest

from stream.serving.reasons import PathAttribution

PARAMS = {"max_depth": 3, "num_leaves": 8, "min_data_in_leaf": 5, "min_sum_hessian_in_leaf": 1e-3,
          "num_threads": 1, "deterministic": True, "seed": 3, "verbose": -1}
# The demo trains a binary model with lambda_l2=10: there a node's `internal_value` is not the mean below it.
OBJECTIVES = {"regression": {"objective": "regression"},
              "binary_l2": {"objective": "binary", "lambda_l2": 10.0, "learning_rate": 0.3}}


def _train(x: np.ndarray, y: np.ndarray, trees: int, **params) -> lgb.Booster:
    return lgb.train({**PARAMS, **params}, lgb.Dataset(x, y), trees)


def _continuous(seed: int = 11, n: int = 600):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    x[::9, 1] = np.nan  # missing values take the split's default side, in v(S) as in LightGBM
    signal = x[:, 0] + np.where(np.isnan(x[:, 1]), 0.5, x[:, 1] * (x[:, 2] > 0)) - 0.5 * x[:, 3] ** 2
    return x, (signal + rng.normal(scale=0.3, size=n) > 0.3).astype(float)


def _binary_features(seed: int = 12, n: int = 800):
    """0/1 features: a split leaves its feature constant below, so no path meets a feature twice."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, size=(n, 4)).astype(float)
    logit = 1.5 * x[:, 0] * x[:, 1] - x[:, 2] + 0.7 * x[:, 3] * (1 - x[:, 0])
    return x, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)


def _trees(booster: lgb.Booster) -> list[dict]:
    return [t["tree_structure"] for t in booster.dump_model()["tree_info"]]


def _count(node: dict) -> int:
    return node["leaf_count"] if "leaf_value" in node else node["internal_count"]


def _goes_left(node: dict, value: float) -> bool:
    assert node["decision_type"] == "<=", "numerical splits only"
    missing = node["missing_type"]
    if math.isnan(value) and missing == "NaN" or missing == "Zero" and (math.isnan(value) or value == 0.0):
        return node["default_left"]
    return (0.0 if math.isnan(value) else value) <= node["threshold"]


def _value(node: dict, row: np.ndarray, known: frozenset) -> float:
    """v(S) for one tree: known features follow the row, unknown ones both children, by training counts."""
    if "leaf_value" in node:
        return node["leaf_value"]
    left, right = node["left_child"], node["right_child"]
    if node["split_feature"] in known:
        return _value(left if _goes_left(node, row[node["split_feature"]]) else right, row, known)
    weighted = _count(left) * _value(left, row, known) + _count(right) * _value(right, row, known)
    return weighted / _count(node)


def _shapley(trees: list[dict], row: np.ndarray) -> np.ndarray:
    """Every subset of the features, each marginal contribution weighted by |S|! (M - |S| - 1)! / M!."""
    m = len(row)
    v = {frozenset(s): sum(_value(t, row, frozenset(s)) for t in trees)
         for size in range(m + 1) for s in combinations(range(m), size)}
    phi = np.zeros(m)
    for i in range(m):
        for s, value in v.items():
            if i not in s:
                phi[i] += math.factorial(len(s)) * math.factorial(m - len(s) - 1) / math.factorial(m) * (
                    v[s | {i}] - value)
    return phi


def _path_order(tree: dict, row: np.ndarray) -> list[int]:
    order, node = [], tree
    while "leaf_value" not in node:
        order.append(node["split_feature"])
        node = node["left_child"] if _goes_left(node, row[node["split_feature"]]) else node["right_child"]
    return order


def _ordered_marginals(trees: list[dict], row: np.ndarray) -> np.ndarray:
    """Per tree, v(first k features met) - v(first k - 1): one ordering of the Shapley average, not all of them."""
    phi = np.zeros(len(row))
    for tree in trees:
        known: frozenset = frozenset()
        for feature in _path_order(tree, row):
            phi[feature] += _value(tree, row, known | {feature}) - _value(tree, row, known)
            known |= {feature}
    return phi


def _feature_repeats_on_a_path(node: dict, above: frozenset = frozenset()) -> bool:
    if "leaf_value" in node:
        return False
    f = node["split_feature"]
    return f in above or any(_feature_repeats_on_a_path(node[s], above | {f}) for s in ("left_child", "right_child"))


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("trees", [1, 5])
def test_treeshap_equals_brute_force_shapley_values(objective, trees):
    x, y = _continuous()
    booster = _train(x, y, trees, **OBJECTIVES[objective])
    dumped = _trees(booster)
    assert any(_feature_repeats_on_a_path(t) for t in dumped) or trees == 1  # the general case, not only the easy one
    rows = np.vstack([x[:40], [[np.nan, np.nan, 0.5, -1.0]]])
    contrib = booster.predict(rows, pred_contrib=True, num_threads=1)
    expected_value = sum(_value(t, rows[0], frozenset()) for t in dumped)
    np.testing.assert_allclose(contrib[:, -1], expected_value, rtol=0, atol=1e-9)
    for row, values in zip(rows, contrib):
        np.testing.assert_allclose(values[:-1], _shapley(dumped, row), rtol=0, atol=1e-9)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_path_attribution_is_one_ordering_of_the_shapley_average(objective):
    x, y = _binary_features()
    booster = _train(x, y, 5, **OBJECTIVES[objective])
    dumped = _trees(booster)
    assert not any(_feature_repeats_on_a_path(t) for t in dumped)
    rows = np.unique(x, axis=0)  # all 16 rows there are
    attribution = PathAttribution(booster)
    path = attribution.contributions(rows)
    shap = booster.predict(rows, pred_contrib=True, num_threads=1)
    raw = booster.predict(rows, raw_score=True, num_threads=1)
    for row, credits in zip(rows, path):
        np.testing.assert_allclose(credits, _ordered_marginals(dumped, row), rtol=0, atol=1e-9)
    # Both add up to the raw score, from the same starting point: the model's expected output.
    np.testing.assert_allclose(attribution.bias, shap[0, -1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(path.sum(axis=1) + attribution.bias, raw, rtol=0, atol=1e-9)
    np.testing.assert_allclose(shap.sum(axis=1), raw, rtol=0, atol=1e-9)
    assert np.abs(path - shap[:, :-1]).max() > 0.01  # the interactions make them differ


def test_and_tree_where_path_attribution_and_shapley_values_differ():
    """y = 80 if x0 and x1, on four equally large groups: the tree splits x0 first, then x1 where x0 = 1.

    Expected output 20; at x0 = 1 the mean is 40; the leaf (1, 1) is 80.
    Path credits x0 with 40 - 20 and x1 with 80 - 40: the root's feature gets
    less, though the two features play the same part. Shapley splits it
    30 / 30. At (0, 1) the path never meets x1, so x1 gets nothing, while
    Shapley gives it +10: knowing x1 = 1 alone lifts the expectation to 40.
    """
    x = np.array([[a, b] for a in (0.0, 1.0) for b in (0.0, 1.0)] * 50)
    y = 80.0 * (x[:, 0] * x[:, 1])
    booster = _train(x, y, 1, objective="regression", learning_rate=1.0, min_data_in_leaf=1)
    [tree] = _trees(booster)
    assert tree["split_feature"] == 0 and "leaf_value" in tree["left_child"]
    rows = np.array([[1.0, 1.0], [0.0, 1.0]])
    attribution = PathAttribution(booster)
    np.testing.assert_allclose(attribution.bias, 20.0, atol=1e-9)
    np.testing.assert_allclose(attribution.contributions(rows), [[20.0, 40.0], [-20.0, 0.0]], atol=1e-9)
    shap = booster.predict(rows, pred_contrib=True, num_threads=1)
    np.testing.assert_allclose(shap, [[30.0, 30.0, 20.0], [-30.0, 10.0, 20.0]], atol=1e-9)
    np.testing.assert_allclose([_shapley([tree], r) for r in rows], shap[:, :-1], atol=1e-9)
