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

`compute_reference` writes that format from arrays with training's own
code (stream.lifecycle.reference): for a model that was trained without one
(the monitor then takes the first events it sees as the reference, and
says so) and for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.lifecycle.reference import reference
from stream.monitor.histograms import Binning

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


def compute_reference(matrix: np.ndarray, names: list[str], scores: np.ndarray, contributions=None) -> dict:
    """The reference of rows `matrix` (columns `names`) and their scores, as training writes it."""
    return reference(np.asarray(matrix, dtype=np.float64).reshape(len(scores), len(names)), names, scores, contributions)
