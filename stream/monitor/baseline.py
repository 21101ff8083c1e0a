"""A model's reference distributions: read from model.json, or computed from rows.

The format is the one `model.json` carries under "reference" (written at
training time on the validation rows):

    {"rows": n,
     "features": {name: {"kind": "numeric", "edges": [...], "counts": [...], "missing": k, "min": a, "max": b}
                        | {"kind": "categorical", "counts": {"<value>": k, ...}, "missing": k}},
     "score": {"kind": "numeric", ...},
     "contributions": {name: mean |TreeSHAP contribution|}, "contribution_rank": [names]}

Numeric edges are the interior deciles (deduplicated), so counts has one
entry more than edges; a value's bin is searchsorted(edges, x, "right"),
NaN is "missing". An integer column with at most 20 distinct values is
categorical, counted by str(value) ("3", not "3.0").

`compute_reference` writes that format from arrays: for a model that was
trained without one (the monitor then takes the first events it sees as
the reference, and says so) and for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.monitor.histograms import CATEGORICAL, NUMERIC, Binning, category_key

#: Integer columns with at most this many distinct values are categorical.
MAX_CATEGORIES = 20
BINS = 10
SCORE = "score"


@dataclass(frozen=True)
class Baseline:
    """The reference of one model version, as binnings in the model's feature order."""

    version: str
    rows: int
    features: tuple[Binning, ...]
    score: Binning
    contributions: dict[str, float]  # {} when the reference has none
    source: str  # "model" (model.json) or "stream" (computed from the first events)

    @classmethod
    def from_reference(cls, version: str, names: list[str], reference: dict, source: str = "model") -> Baseline:
        specs = reference.get("features", {})
        absent = [n for n in names if n not in specs]
        if absent:
            msg = f"reference of model {version} lacks features {absent[:3]}; retrain to rebuild it"
            raise ValueError(msg)
        features = tuple(Binning.from_reference(n, specs[n]) for n in names)
        score = Binning.from_reference(SCORE, reference["score"])
        contributions = {n: float(v) for n, v in (reference.get("contributions") or {}).items()}
        return cls(version, int(reference.get("rows", 0)), features, score, contributions, source)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.features]


def numeric_spec(values: np.ndarray, bins: int = BINS) -> dict:
    x = np.asarray(values, dtype=np.float64)
    present = x[~np.isnan(x)]
    if not len(present):
        return {"kind": NUMERIC, "edges": [], "counts": [0], "missing": int(len(x)), "min": None, "max": None}
    quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(quantiles)
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return {
        "kind": NUMERIC, "edges": edges.tolist(), "counts": counts.tolist(), "missing": int(len(x) - len(present)),
        "min": float(present.min()), "max": float(present.max()),
    }


def categorical_spec(values) -> dict:
    counts: dict[str, int] = {}
    missing = 0
    for v in np.asarray(values, dtype=object).tolist():
        if v is None or (isinstance(v, float) and v != v):
            missing += 1
            continue
        key = category_key(v)
        counts[key] = counts.get(key, 0) + 1
    return {"kind": CATEGORICAL, "counts": counts, "missing": missing}


def is_categorical(values: np.ndarray) -> bool:
    """Integer-valued with at most MAX_CATEGORIES distinct values (text columns are always categorical)."""
    x = np.asarray(values)
    if x.dtype.kind not in "fiu":
        return True
    x = x.astype(np.float64)
    present = x[~np.isnan(x)]
    if not len(present) or not np.all(present == np.round(present)):
        return False
    return len(np.unique(present)) <= MAX_CATEGORIES


def compute_reference(matrix: np.ndarray, names: list[str], scores: np.ndarray, contributions=None) -> dict:
    """The reference of rows `matrix` (columns `names`) and their scores; `contributions` (n x features) optional."""
    matrix = np.asarray(matrix, dtype=np.float64).reshape(len(scores), len(names))
    features = {}
    for j, name in enumerate(names):
        column = matrix[:, j]
        features[name] = categorical_spec(column) if is_categorical(column) else numeric_spec(column)
    reference = {"rows": int(len(scores)), "features": features, "score": numeric_spec(scores)}
    if contributions is not None:
        mean_abs = np.abs(np.asarray(contributions, dtype=np.float64)).mean(axis=0)
        reference["contributions"] = {n: float(v) for n, v in zip(names, mean_abs)}
        reference["contribution_rank"] = [names[i] for i in np.argsort(-mean_abs, kind="stable")]
    return reference
