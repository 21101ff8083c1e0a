"""The reference distributions a model carries in model.json, for the drift monitor.

Computed at training time on the validation rows (the most recent labelled
data the model has seen scored), in the format the monitor reads:

    {"rows": n,
     "features": {name: {"kind": "numeric", "edges": [...], "counts": [...], "missing": k, "min": a, "max": b}
                        | {"kind": "categorical", "counts": {"<value>": k}, "missing": k}},
     "score": {"kind": "numeric", ...},
     "contributions": {name: mean |TreeSHAP contribution|},
     "contribution_rank": [names, largest mean |contribution| first]}

Numeric edges are the interior deciles, deduplicated, so a column with few
values gets fewer bins; a value's bin is `searchsorted(edges, x, "right")`
and NaN counts as missing. A column is categorical when the caller says so
(a String or Bool Feast type) or when it holds integers only, with at most
`MAX_CATEGORIES` distinct values; categories are keyed "3", never "3.0".
Pure numpy: no model, no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

BINS = 10
#: An integer column with at most this many distinct values is categorical.
MAX_CATEGORIES = 20


def category_key(value) -> str:
    """How a category is named: str(value), integral numbers without ".0"."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def numeric_entry(values: np.ndarray, bins: int = BINS) -> dict:
    x = np.asarray(values, dtype=np.float64)
    present = x[~np.isnan(x)]
    missing = int(len(x) - len(present))
    if not len(present):
        # JSON has no NaN: an empty column has no range.
        return {"kind": "numeric", "edges": [], "counts": [0], "missing": missing, "min": None, "max": None}
    edges = np.unique(np.quantile(present, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return {
        "kind": "numeric",
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "missing": missing,
        "min": float(present.min()),
        "max": float(present.max()),
    }


def categorical_entry(values: np.ndarray) -> dict:
    x = np.asarray(values, dtype=object)
    keys = [category_key(v) for v in x.tolist() if not _missing(v)]
    found, counts = np.unique(np.asarray(keys, dtype=object), return_counts=True) if keys else ([], [])
    return {"kind": "categorical", "counts": {str(k): int(c) for k, c in zip(found, counts)}, "missing": len(x) - len(keys)}


def is_categorical(values: np.ndarray) -> bool:
    """Integer values only (NaN aside), at most MAX_CATEGORIES of them; text is always categorical."""
    x = np.asarray(values)
    if x.dtype.kind not in "fiub":
        return True
    present = x.astype(np.float64)
    present = present[~np.isnan(present)]
    if not len(present) or not np.array_equal(present, np.round(present)):
        return False
    return len(np.unique(present)) <= MAX_CATEGORIES


def reference(
    matrix: np.ndarray,
    names: Sequence[str],
    scores: np.ndarray,
    contributions: np.ndarray | None = None,
    *,
    categorical: Collection[str] = (),
    bins: int = BINS,
) -> dict:
    """The reference of `matrix` (rows x `names`) and its `scores`.

    `contributions` is LightGBM's `pred_contrib` output on (a sample of)
    the same rows: one column per feature, plus the bias column LightGBM
    appends, which is dropped here.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[1] != len(names) or len(matrix) != len(scores):
        msg = f"reference: matrix {matrix.shape} does not match {len(names)} names and {len(scores)} scores"
        raise ValueError(msg)
    features = {}
    for j, name in enumerate(names):
        column = matrix[:, j]
        if name in categorical or is_categorical(column):
            features[name] = categorical_entry(column)
        else:
            features[name] = numeric_entry(column, bins)
    out = {"rows": int(len(matrix)), "features": features, "score": numeric_entry(scores, bins)}
    if contributions is not None:
        contrib = np.asarray(contributions, dtype=np.float64)
        if contrib.ndim != 2 or contrib.shape[1] not in (len(names), len(names) + 1):
            msg = f"reference: contributions {contrib.shape} do not have one column per feature (plus the bias)"
            raise ValueError(msg)
        mean_abs = np.abs(contrib[:, : len(names)]).mean(axis=0) if len(contrib) else np.zeros(len(names))
        out["contributions"] = {name: float(v) for name, v in zip(names, mean_abs)}
        # Largest first; ties in the order of the vector, so the rank is deterministic.
        out["contribution_rank"] = [names[i] for i in np.argsort(-mean_abs, kind="stable")]
    return out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float | np.floating) and np.isnan(value))
