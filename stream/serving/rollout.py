"""The rollout policy: canary steps, guardrails and the A/B sample-ratio check, from what was served.

It reads prediction log records (only those written under the deployment
now serving: `deployment` is the record's seq) and answers with the next
deployment, or nothing. A guardrail that trips rolls the canary back to the
champion alone; a ramp step raises the canary's share when its arm has had
`step_after_events` events (or `step_after_s` seconds) since the last step.
Both are new deployment records with their reason: the history says why.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from stream.serving.deployment import Deployment

#: A/B: a sample-ratio mismatch is flagged below this p-value (chi-square, one degree of freedom).
SRM_P = 0.001
SRM_MIN_ENTITIES = 1000
#: Entities an arm remembers for the A/B check (bounded memory; the check uses what it has).
MAX_ENTITIES = 1_000_000
#: The challenger's most recent scores the PSI guardrail judges.
MAX_SCORES = 100_000


def now_iso() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="milliseconds")


@dataclass
class Arm:
    """What one route answered under one deployment."""

    events: int = 0
    fallbacks: int = 0
    score_ms: list = field(default_factory=list)  # per-batch scoring time of the batches it was in
    scores: list = field(default_factory=list)
    entities: set = field(default_factory=set)  # routing is per entity: the A/B check counts entities

    def add(self, record: dict, entity) -> None:
        self.events += 1
        if len(self.entities) < MAX_ENTITIES:
            self.entities.add(entity)
        if record.get("fallback"):
            self.fallbacks += 1
        score = record.get("score")
        if score is not None:
            self.scores.append(float(score))
        latency = record.get("latency_ms") or {}
        if "score" in latency:
            self.score_ms.append(float(latency["score"]))


def psi(reference: dict, values: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of `values` against a reference histogram (contract format)."""
    edges = np.asarray(reference["edges"], dtype=np.float64)
    expected = np.asarray(reference["counts"], dtype=np.float64)
    observed = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(expected)).astype(np.float64)
    p = np.maximum(expected / max(expected.sum(), 1.0), eps)
    q = np.maximum(observed / max(observed.sum(), 1.0), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def srm_p_value(a: int, b: int, share_b: float) -> float:
    """p-value of the observed A/B counts under the declared split (chi-square, 1 dof)."""
    n = a + b
    if n == 0 or share_b in (0.0, 1.0):
        return 1.0
    expected_b = n * share_b
    expected_a = n - expected_b
    chi2 = (a - expected_a) ** 2 / expected_a + (b - expected_b) ** 2 / expected_b
    return math.erfc(math.sqrt(chi2 / 2))


class RolloutPolicy:
    def __init__(self, entity_field: str, reference_of=lambda version: None):
        self.entity_field = entity_field  # the routing key: the events topic's partition key
        self.reference_of = reference_of  # version -> the score reference stored with the model, or None
        self.seq = -1
        self.arms: dict[str, Arm] = {}
        self.started_s: float | None = None
        self.challenger_scores: deque = deque(maxlen=MAX_SCORES)

    def observe(self, deployment: Deployment, records: list[dict], now_s: float) -> None:
        if deployment.seq != self.seq:
            self.seq, self.arms, self.started_s = deployment.seq, {}, None
            self.challenger_scores = deque(maxlen=MAX_SCORES)
        for record in records:
            if record.get("deployment") != deployment.seq:
                continue
            if self.started_s is None:
                self.started_s = now_s  # the step clock starts when the workers serve it, not when it was written
            entity = (record.get("entity") or {}).get(self.entity_field)
            self.arms.setdefault(record.get("route", "champion"), Arm()).add(record, entity)
            if deployment.challengers:
                # The challenger scores every event, whichever arm answers it: its score distribution
                # is judged on all of them, not on the canary's entities alone (a subset of entities
                # has its own mix of, say, fraud, and would look shifted by itself).
                score = (record.get("scores") or {}).get(deployment.challengers[0])
                if score is not None:
                    self.challenger_scores.append(float(score))

    def decide(self, deployment: Deployment, now_s: float) -> Deployment | None:
        if deployment.mode != "canary" or deployment.seq != self.seq:
            return None
        arm = self.arms.get("canary", Arm())
        breach = self._breach(deployment, arm)
        if breach is not None:
            return deployment.but(
                seq=deployment.seq + 1, mode="champion", challengers=(), share=0.0, ramp=(), step=0,
                reason=f"guardrail: {breach}; canary {deployment.challengers[0]} rolled back", by="guardrail",
                at=now_iso(),
            )
        if not deployment.ramp or deployment.step + 1 >= len(deployment.ramp):
            return None
        due_events = deployment.step_after_events and arm.events >= deployment.step_after_events
        due_time = (deployment.step_after_s and self.started_s is not None
                    and now_s - self.started_s >= deployment.step_after_s)
        if not (due_events or due_time):
            return None
        step = deployment.step + 1
        return deployment.but(
            seq=deployment.seq + 1, step=step, share=deployment.ramp[step], by="ramp", at=now_iso(),
            reason=f"ramp step {step}: {arm.events} canary events, {arm.fallbacks} fallbacks, no guardrail crossed",
        )

    def _breach(self, deployment: Deployment, arm: Arm) -> str | None:
        rails = deployment.guardrails
        if arm.events < rails.min_events:
            return None
        rate = arm.fallbacks / arm.events
        if rate > rails.max_fallback_rate:
            return f"fallback rate {rate:.3f} > {rails.max_fallback_rate}"
        if arm.score_ms:
            p99 = float(np.percentile(arm.score_ms, 99))
            if p99 > rails.max_score_ms_p99:
                return f"scoring time p99 {p99:.1f} ms > {rails.max_score_ms_p99} ms"
        reference = self.reference_of(deployment.challengers[0])
        if reference is not None and len(self.challenger_scores) >= rails.min_events:
            value = psi(reference, np.asarray(self.challenger_scores))
            if value > rails.max_score_psi:
                return f"score PSI {value:.3f} against its reference > {rails.max_score_psi}"
        return None

    def sample_ratio(self, deployment: Deployment) -> dict | None:
        """An A/B deployment's sample-ratio check, once both arms have enough events."""
        if deployment.mode != "ab" or deployment.seq != self.seq:
            return None
        a = len(self.arms.get("ab:A", Arm()).entities)
        b = len(self.arms.get("ab:B", Arm()).entities)
        if a + b < SRM_MIN_ENTITIES:
            return None
        p = srm_p_value(a, b, deployment.share)
        return {"entities_a": a, "entities_b": b, "expected_share_b": deployment.share, "p_value": p, "mismatch": p < SRM_P}
