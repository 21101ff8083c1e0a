"""Reason codes: the features that pushed a score up or down, cheap enough for the scoring path.

TreeSHAP (LightGBM `pred_contrib`) costs about 400 predictions per row here,
so the scoring path can use path attribution instead (Saabas): in each tree,
the change in the mean output at every split on the way to the leaf is
credited to the split's feature. The credits of a leaf depend on the leaf
alone, so they are tabulated once per model (trees x leaves x features); per
row it takes one `pred_leaf` call (the cost of a prediction) and a sum of one
table row per tree. Like TreeSHAP the credits add up exactly, from the same
start: bias (the model's expected raw score) + sum = the raw score (log-odds).

What they are, next to Shapley values (tests/stream/serving/
test_attribution_shapley.py checks both against a brute-force enumeration of
feature subsets): with v(S) the tree's output when only the features in S are
known, TreeSHAP averages each feature's marginal contribution v(S + f) - v(S)
over every order of the features; path attribution takes one order per tree,
the one the row's path meets them in. The order matters where features
interact: for y = x0 AND x1 path credits the root's feature less than the
deeper one (20 and 40 where Shapley gives 30 and 30), and gives nothing to a
feature the row's path does not meet (0 where Shapley gives 10).

A node's mean output is computed here from the leaves and their training
counts; LightGBM's `internal_value` would be wrong for this (a regularised,
hessian-weighted Newton step). With it, the roots summed to -4.67 on the
full bench's 50,000-card demo model against an expected score of -7.25, and
the gap was credited to the features split near the roots: top-1 features
agreed with TreeSHAP on 88 % of rows, top-3 sets on 1 %. With means: 100 %
and 99 % (docs/lifecycle.md, "Reason codes").
"""

from __future__ import annotations

import numpy as np


class PathAttribution:
    """Per-row signed contributions (log-odds) for a LightGBM booster."""

    def __init__(self, booster):
        dump = booster.dump_model()
        self.names = list(dump["feature_names"])
        n_features = len(self.names)
        trees = dump["tree_info"]
        n_leaves = max(t.get("num_leaves", 1) for t in trees) if trees else 1
        self.table = np.zeros((len(trees), n_leaves, n_features), dtype=np.float64)
        self.bias = 0.0
        for t, tree in enumerate(trees):
            root = tree["tree_structure"]
            if "leaf_value" in root:  # a tree of one leaf: a constant
                self.bias += float(root["leaf_value"])
                continue
            means = _expected_outputs(root)
            self.bias += means[id(root)]
            self._walk(self.table[t], root, means, np.zeros(n_features))
        self.booster = booster

    @staticmethod
    def _walk(table: np.ndarray, root: dict, means: dict[int, float], credit: np.ndarray) -> None:
        stack = [(root, credit)]
        while stack:
            node, credit = stack.pop()
            for side in ("left_child", "right_child"):
                child = node[side]
                step = credit.copy()
                step[node["split_feature"]] += means[id(child)] - means[id(node)]
                if "leaf_value" in child:
                    table[child.get("leaf_index", 0)] = step
                else:
                    stack.append((child, step))

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """(rows x features) contributions; each row sums to its raw score minus `bias`."""
        if not len(matrix):
            return np.zeros((0, len(self.names)))
        leaves = np.asarray(self.booster.predict(matrix, pred_leaf=True, num_threads=1), dtype=np.int64)
        leaves = leaves.reshape(len(matrix), -1)
        trees = np.arange(leaves.shape[1])
        return self.table[trees[None, :], leaves].sum(axis=1)


def _expected_outputs(root: dict) -> dict[int, float]:
    """Each node's mean output over the training rows that reached it (by `id` of its dump dict).

    Not LightGBM's `internal_value`: that is the node's own Newton step,
    -G / (H + lambda_l2), hessian-weighted and shrunk, not the mean of the
    leaves below. The counts are the ones TreeSHAP weighs the two sides of a
    split on an unknown feature by, so the root's mean is TreeSHAP's
    expected value.
    """
    order, stack = [], [root]
    while stack:
        node = stack.pop()
        order.append(node)
        if "leaf_value" not in node:
            stack += [node["left_child"], node["right_child"]]
    means: dict[int, float] = {}
    counts: dict[int, float] = {}
    for node in reversed(order):  # children before their parent
        if "leaf_value" in node:
            means[id(node)], counts[id(node)] = float(node["leaf_value"]), float(node["leaf_count"])
            continue
        left, right = id(node["left_child"]), id(node["right_child"])
        counts[id(node)] = counts[left] + counts[right]
        means[id(node)] = (means[left] * counts[left] + means[right] * counts[right]) / counts[id(node)]
    return means


def top_k(names: list[str], contributions: np.ndarray, k: int) -> list[list]:
    """Per row: the k largest contributions by magnitude, as [feature, signed value] (rounded to 1e-6)."""
    if not len(contributions):
        return []
    k = min(k, contributions.shape[1])
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :k]
    out = []
    for row, idx in zip(contributions.tolist(), order.tolist()):
        out.append([[names[j], round(row[j], 6)] for j in idx])
    return out


def sampled(event_ids: list[str], share: float) -> np.ndarray:
    """A stable sample of events (by id) of about `share`: the same events on every replay."""
    if share <= 0:
        return np.zeros(len(event_ids), dtype=bool)
    if share >= 1:
        return np.ones(len(event_ids), dtype=bool)
    import zlib

    cut = int(share * (1 << 32))
    return np.array([zlib.crc32(e.encode()) < cut for e in event_ids], dtype=bool)
