"""Reason codes for scored events: which events get them, and their top-k contributions, batched per version.

One computation for the two places reason codes are made: inside the
scoring batch (SLUICE_REASONS=inline, stream/serving/scorer.py) and after
it, from the prediction log (`sluice reasons`, the default, so that a
prediction never waits for its explanation). Both explain the same events,
every positive decision (a would-be block that exploration let through
included: it is explained like any block) and a stable sample of the rest by
event id (SLUICE_REASON_SHARE), and give the same numbers for the same
vector: the log holds the exact vector that was scored.

`explain_log` is the reasons service's step: prediction-log records in,
reason records out, nothing else touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from stream.serving.reasons import PathAttribution, sampled, top_k


class Explainer:
    """Top-k signed contributions (log-odds) per row, by TreeSHAP (`pred_contrib`) or path attribution."""

    def __init__(self, k: int = 3, method: str = "treeshap"):
        self.k = k
        self.method = method
        self._paths: dict[str, PathAttribution] = {}  # version -> its table, built on first use

    def contributions(self, model, matrix: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(rows x features) contributions of `model` for `matrix`, and the features' names."""
        if self.method == "treeshap":
            values = np.asarray(model.booster.predict(matrix, pred_contrib=True, num_threads=1))[:, :-1]
            return values, list(model.features)
        path = self._paths.get(model.version)
        if path is None:
            path = self._paths[model.version] = PathAttribution(model.booster)
        return path.contributions(matrix), path.names

    def top(self, model, matrix: np.ndarray) -> list[list]:
        """Per row of `matrix`: the top-k [[feature, contribution], ...] of `model`."""
        values, names = self.contributions(model, matrix)
        return top_k(names, values, self.k)

    def explain(self, models: Mapping, matrix: np.ndarray, versions: list, rows: list[int]) -> dict[int, list]:
        """Row -> its top-k, for `rows` of one batch's matrix: one attribution call per version, over its rows."""
        out: dict[int, list] = {}
        for version in dict.fromkeys(versions[i] for i in rows):
            mine = [i for i in rows if versions[i] == version]
            out.update(zip(mine, self.top(models[version], matrix[mine])))
        return out


def wanted(blocks, versions: list, event_ids: list[str], share: float) -> list[int]:
    """The rows that get reason codes: (would-be) blocks and a stable sample of the rest, if a model answered them."""
    if not len(event_ids):
        return []
    chosen = np.asarray(blocks, dtype=bool) | sampled(event_ids, share)
    chosen &= np.array([v is not None for v in versions], dtype=bool)
    return np.flatnonzero(chosen).tolist()


@dataclass
class Explained:
    """What one step of the reasons service produced."""

    records: list[dict] = field(default_factory=list)  # one reason record per explained event, in log order
    unexplained: list[tuple[str, str]] = field(default_factory=list)  # (event id, why) wanted but not explained


def explain_log(
    logs: list[dict], id_field: str, models: Mapping, explainer: Explainer, share: float = 0.0,
) -> Explained:
    """Reason records for prediction-log records: `{<id field>, model_version, decision, would_block, method, reasons}`.

    `models`: version -> loaded model, for the versions that answered these
    records; a record whose version is missing from it (the registry could
    not provide it) is reported as unexplained, never guessed.
    """
    out = Explained()
    if explainer.k <= 0 or not logs:
        return out
    ids = [str(r[id_field]) for r in logs]
    versions = [r.get("model_version") for r in logs]
    # A log record carries `would_block` wherever the deployment explored (stream.pipeline.records.exploration).
    blocks = [bool(r.get("would_block", r.get("decision"))) for r in logs]
    top: dict[int, list] = {}
    by_version: dict[str, list[int]] = {}
    for i in wanted(blocks, versions, ids, share):
        by_version.setdefault(versions[i], []).append(i)
    for version, rows in by_version.items():
        model = models.get(version)
        if model is None:
            out.unexplained += [(ids[i], f"model version {version} could not be loaded") for i in rows]
            continue
        try:
            matrix = np.array([[_number(logs[i]["features"][f]) for f in model.features] for i in rows], dtype=np.float64)
        except KeyError as exc:
            out.unexplained += [(ids[i], f"the logged vector has no feature {exc} of model {version}") for i in rows]
            continue
        top.update(zip(rows, explainer.top(model, matrix)))
    for i in sorted(top):
        out.records.append({
            id_field: ids[i], "model_version": versions[i], "decision": bool(logs[i].get("decision")),
            "would_block": blocks[i], "method": explainer.method, "reasons": top[i],
        })
    return out


def _number(value) -> float:
    return np.nan if value is None else float(value)
