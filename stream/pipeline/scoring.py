"""Per-batch bookkeeping of the scoring step: which events' batch features are missing or untrusted, and the counters.

Split from the engine: the engine's `_score` shapes the records; these say
what the batch features were worth and count what served.
"""

from __future__ import annotations

from collections import Counter

from stream import metrics


def missing_views(assembled, n: int) -> list[list[str]]:
    """Per event: the batch views that had no online row for it."""
    views = [name for name, rows in assembled.missing.items() if rows.any()]
    if not views:
        return [[] for _ in range(n)]
    flags = list(zip(*(assembled.missing[name].tolist() for name in views)))  # per event: one flag per view
    return [[name for name, flag in zip(views, row) if flag] for row in flags]


def problems(assembled, missing: list[list[str]], serving) -> list:
    """Per event: why its batch features cannot be trusted, or None.

    A store that failed or is bypassed concerns every event; an entity
    with no online row concerns only its event, and sends it to the
    fallback chain only where the deployment declares one (without one,
    the model scores it with those features missing, as it was trained to).
    """
    if assembled.problem is not None:
        return [assembled.problem] * len(missing)
    if not serving.deployment.fallback:
        return [None] * len(missing)
    return ["batch_features_missing" if views else None for views in missing]


def count(scored, produced: list[int]) -> None:
    """Counters once per batch and label value (a Prometheus increment per event costs microseconds)."""
    versions, routes, fallbacks, rules, shadows = Counter(), Counter(), Counter(), Counter(), Counter()
    reasons = 0
    for row in produced:
        version = scored.versions[row]
        versions[version] += 1
        routes[scored.routes[row]] += 1
        if scored.fallback[row] is not None:
            fallbacks[scored.fallback[row]] += 1
        if scored.rule[row] is not None:
            rules[scored.rule[row].split(":", 1)[0]] += 1
        if scored.reasons[row] is not None:
            reasons += 1
        if len(scored.all_scores[row]) > 1:
            shadows.update(v for v in scored.all_scores[row] if v != version)
    for version, n in versions.items():
        metrics.PREDICTIONS_OUT.labels(version or "rules").inc(n)
    for counter, counts in ((metrics.ROUTED, routes), (metrics.FALLBACKS, fallbacks),
                            (metrics.RULE_DECISIONS, rules), (metrics.SHADOW_SCORES, shadows)):
        for label, n in counts.items():
            counter.labels(label).inc(n)
    if reasons:
        metrics.REASON_CODES.inc(reasons)
