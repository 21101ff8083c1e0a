"""Business rules: what turns a score into a decision, declared in the deployment.

    {"clip": [0.0, 0.99],                                  # scores outside are clipped
     "threshold": {"field": "channel", "values": {"online": 0.3}},   # per-segment thresholds
     "deny": {"field": "card_id", "values": ["c1"]},       # always positive
     "allow": {"field": "merchant_id", "values": ["m9"]},  # always negative
     "fallback": [{"name": "big_amount", "field": "amount", "above": 2000, "decision": true}],
     "fallback_default": false}                            # rules-only answer when no rule matched

Order: clip, then the threshold (the segment's if declared, else the
model's), then allow, then deny (deny wins). The log names the rule that
decided (`rule`); null means the model's own threshold did. The `fallback`
rules answer events no model could score (the last step of a fallback
chain): their score is null, not invented.
"""

from __future__ import annotations

import numpy as np

from stream.serving.deployment import DeploymentError


def _values_of(field: str, records: list[dict]) -> list[str]:
    return [str(r.get(field)) for r in records]


def decide(rules: dict, records: list[dict], scores: np.ndarray, thresholds: np.ndarray):
    """(scores after clipping, decisions, rule names or None) for scored events."""
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64).copy()
    n = len(scores)
    rule = np.full(n, None, dtype=object)
    clip = rules.get("clip")
    if clip:
        low, high = float(clip[0]), float(clip[1])
        clipped = (scores < low) | (scores > high)
        scores = np.clip(scores, low, high)
        rule[clipped] = "clip"
    segment = rules.get("threshold")
    if segment:
        field, by_value = segment["field"], segment.get("values", {})
        for i, value in enumerate(_values_of(field, records)):
            if value in by_value:
                thresholds[i] = float(by_value[value])
                rule[i] = f"threshold:{field}={value}"
    decisions = scores >= thresholds
    for name, verdict in (("allow", False), ("deny", True)):
        listed = rules.get(name)
        if listed:
            members = {str(v) for v in listed.get("values", ())}
            hit = np.array([v in members for v in _values_of(listed["field"], records)], dtype=bool)
            decisions[hit] = verdict
            rule[hit] = f"{name}:{listed['field']}"
    return scores, decisions, rule.tolist()


def fallback(rules: dict, records: list[dict], vectors: dict[str, np.ndarray]):
    """(decisions, rule names) from the declared fallback rules, for events no model scored.

    A rule reads an event field or a vector feature; the first rule that
    matches decides, and events no rule matches get `fallback_default`.
    """
    n = len(records)
    decisions = np.full(n, bool(rules.get("fallback_default", False)))
    rule = np.full(n, "fallback_default", dtype=object)
    undecided = np.ones(n, dtype=bool)
    for spec in rules.get("fallback", ()):
        try:
            field, name = spec["field"], spec.get("name", spec["field"])
            if field in vectors:
                values = np.asarray(vectors[field], dtype=np.float64)
            else:
                values = np.array([_number(r.get(field)) for r in records], dtype=np.float64)
            hit = np.ones(n, dtype=bool)
            if "above" in spec:
                hit &= values > float(spec["above"])
            if "below" in spec:
                hit &= values < float(spec["below"])
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"fallback rule {spec!r} is not valid ({exc}): it needs `field` and `above` and/or `below`"
            raise DeploymentError(msg) from exc
        hit &= undecided
        decisions[hit] = bool(spec.get("decision", True))
        rule[hit] = f"fallback:{name}"
        undecided &= ~hit
    return decisions, rule.tolist()


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def check(rules: dict) -> None:
    """Raise DeploymentError if `rules` cannot be applied (checked when a deployment is written)."""
    known = {"clip", "threshold", "deny", "allow", "fallback", "fallback_default"}
    unknown = set(rules) - known
    if unknown:
        msg = f"unknown business rules {sorted(unknown)}; known: {sorted(known)}"
        raise DeploymentError(msg)
    for name in ("threshold", "deny", "allow"):
        if name in rules and "field" not in rules[name]:
            msg = f"business rule `{name}` needs a `field`"
            raise DeploymentError(msg)
    if "clip" in rules and len(rules["clip"]) != 2:
        msg = "business rule `clip` is [low, high]"
        raise DeploymentError(msg)
    fallback(rules, [{}], {})
