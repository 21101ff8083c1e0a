"""One scoring step per micro-batch: route, score with every deployed model, fall back, apply the rules.

`Serving` is what is loaded: a deployment and its verified models. The
engine takes one `Serving` per batch (a swap applies at a batch boundary)
and calls `score`: every version in the deployment scores the whole batch,
once each, on the same matrix (shadows cost the model alone); each event is
answered by the version its route names; events that version cannot answer
(it raised, or its batch features are missing or unreachable) walk the
deployment's fallback chain: other versions, then rules. An event no step
can answer is reported, never given an invented score.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from stream.serving import explore
from stream.serving import rules as business
from stream.serving.deployment import RULES, Deployment, first, routes, serving_version
from stream.serving.explain import Explainer, wanted

log = logging.getLogger("sluice.serving")


@dataclass
class Serving:
    deployment: Deployment
    models: dict  # version -> stream.serving.model.Model (deployed and fallback versions)
    reason_share: float = 0.0  # share of negative decisions that get reason codes too (positives always do)
    reason_k: int = 3  # 0: none in the batch (SLUICE_REASONS=service: `sluice reasons` computes them from the log)
    reason_method: str = "treeshap"  # or "path": see stream/serving/reasons.py and `sluice bench`
    explainer: Explainer = field(init=False, repr=False)

    def __post_init__(self):
        self.explainer = Explainer(self.reason_k, self.reason_method)

    @classmethod
    def alone(cls, model, **kwargs) -> Serving:
        return cls(first(model.version), {model.version: model}, **kwargs)

    @property
    def champion(self):
        return self.models[self.deployment.champion]


class Answer(NamedTuple):
    """How one event was answered: what its prediction and log records say of serving."""

    score: float | None  # None where rules alone decided
    decision: bool
    version: str | None  # None: rules
    route: str
    fallback: str | None  # why the routed version did not answer
    rule: str | None  # the business rule that decided
    scores: dict  # {version: score} of every version that scored the event
    threshold: float | None
    reasons: list | None  # [[feature, contribution], ...]
    exploration: explore.Outcome | None = None  # None: the deployment does not explore


@dataclass
class Scored:
    """Per event: what answered it and how. `score` is None where rules alone decided."""

    scores: list  # the published score (float or None)
    decisions: list  # bool
    versions: list  # version that answered, or None (rules)
    routes: list
    fallback: list  # None or the reason the routed version did not answer
    rule: list  # None or the business rule that decided
    all_scores: list  # {version: score} of every version that scored the event
    thresholds: list
    reasons: list  # None or [[feature, contribution], ...]
    unanswered: list[tuple[int, str]]  # (row, why) events nothing could answer
    score_ms: float  # all model calls of the batch
    errors: dict  # version -> error text, for versions that raised on this batch
    reason_ms: float = 0.0
    exploration: list | None = None  # per event an explore.Outcome, where the deployment explores

    def answers(self) -> list[Answer]:
        """Per event, its answer as one record (the lists above, row by row)."""
        explored = self.exploration or [None] * len(self.scores)
        return list(map(Answer._make, zip(
            self.scores, self.decisions, self.versions, self.routes, self.fallback, self.rule, self.all_scores,
            self.thresholds, self.reasons, explored,
        )))


def _predict(model, matrix: np.ndarray):
    try:
        return model.predict(matrix), None
    except Exception as exc:  # noqa: BLE001 - a model that raises is an outcome, answered by the fallback chain
        return None, f"{type(exc).__name__}: {exc}"[:200]


def score(
    serving: Serving,
    matrix: np.ndarray,
    records: list[dict],
    entity_keys: list[str],
    event_ids: list[str],
    batch_problem: np.ndarray,
) -> Scored:
    """`batch_problem[i]`: None, or why event i's batch features cannot be trusted (e.g. the store is down)."""
    # Over 60 lines on purpose: route, score, fall back, decide, explain share the
    # per-row arrays and read best in the order they happen.
    dep = serving.deployment
    n = len(matrix)
    started = time.perf_counter()
    routed = routes(dep, entity_keys)
    by_version, errors = {}, {}
    for version in dep.versions:
        scores, error = _predict(serving.models[version], matrix)
        if error is None:
            by_version[version] = scores
        else:
            errors[version] = error
    chain = dep.fallback
    out_scores: list = [None] * n
    out_versions: list = [None] * n
    fallback: list = [None] * n
    rule_rows: list[int] = []
    for i in range(n):
        version = serving_version(dep, routed[i])
        problem = batch_problem[i]
        if version in errors:
            problem = "model_error"
        if problem is None:
            out_scores[i], out_versions[i] = by_version[version][i], version
        else:
            fallback[i] = problem
            if not chain and version in by_version:
                # No chain declared: the routed model answers with the batch features missing, and says so.
                out_scores[i], out_versions[i] = by_version[version][i], version
    # Fallback versions score only the rows that need them, once per version.
    pending = [i for i in range(n) if fallback[i] is not None and out_versions[i] is None]
    for step in chain:
        if not pending:
            break
        if step == RULES:
            rule_rows = pending
            pending = []
            break
        if step in by_version:
            scores = by_version[step][pending]
        else:
            scores, error = _predict(serving.models[step], matrix[pending])
            if error is not None:
                errors[step] = error
                continue
        for j, i in enumerate(pending):
            out_scores[i], out_versions[i] = float(scores[j]), step
        pending = []
    score_ms = (time.perf_counter() - started) * 1000
    unanswered = [(i, f"no model could score it ({fallback[i]}) and the fallback chain {list(chain)} has no rules step")
                  for i in pending]

    all_scores = [{} for _ in range(n)]
    for version, scores in by_version.items():
        values = scores.tolist()
        for i in range(n):
            all_scores[i][version] = values[i]
    for i in range(n):
        if out_versions[i] is not None and out_versions[i] not in all_scores[i]:
            all_scores[i][out_versions[i]] = out_scores[i]

    thresholds = [serving.models[v].threshold if v is not None else None for v in out_versions]
    decisions: list = [False] * n
    rule: list = [None] * n
    scored_rows = [i for i in range(n) if out_versions[i] is not None]
    rules = dep.rules
    if scored_rows:
        clipped, decided, named = business.decide(
            rules, [records[i] for i in scored_rows], np.array([out_scores[i] for i in scored_rows]),
            np.array([thresholds[i] for i in scored_rows]),
        )
        for j, i in enumerate(scored_rows):
            out_scores[i], decisions[i], rule[i] = float(clipped[j]), bool(decided[j]), named[j]
    if rule_rows:
        vectors = dict(zip(serving.champion.features, matrix[rule_rows].T))
        decided, named = business.fallback(rules, [records[i] for i in rule_rows], vectors)
        for j, i in enumerate(rule_rows):
            decisions[i], rule[i] = bool(decided[j]), named[j]

    # Reasons follow the would-be decision: an explored event is explained like any block.
    reasons, reason_ms = _reasons(serving, matrix, out_versions, decisions, event_ids)
    outcomes = None
    if explore.active(dep.exploration):
        outcomes = explore.explore(dep.exploration, records, event_ids, decisions, rule)
        decisions = [d and not o.explored for d, o in zip(decisions, outcomes)]
    return Scored(out_scores, decisions, out_versions, routed, fallback, rule, all_scores, thresholds, reasons,
                  unanswered, score_ms, errors, reason_ms, outcomes)


def _reasons(serving: Serving, matrix, versions, decisions, event_ids):
    """Reason codes for every positive decision and a stable sample of the rest (stream/serving/explain.py)."""
    n = len(matrix)
    reasons: list = [None] * n
    if not n or serving.reason_k <= 0:
        return reasons, 0.0
    started = time.perf_counter()
    rows = wanted(decisions, versions, event_ids, serving.reason_share)
    for i, top in serving.explainer.explain(serving.models, matrix, versions, rows).items():
        reasons[i] = top
    return reasons, (time.perf_counter() - started) * 1000
