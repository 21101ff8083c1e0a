"""The experiments a deployment runs, judged from the `labeled` records (stream/lifecycle/experiments.py).

The deployment in force (the highest seq) says what is compared: in shadow
and canary mode each challenger against the champion on the same events
(every deployed version scores every event, so each labeled row holds both
scores); in A/B mode the champion's loss on arm A's events against the
challenger's on arm B's. Each event counts once, with its latest label
(`labeled.rows`: a correction replaces the label it corrects). Rows without
a label (an `unlabeled` record with no default) count towards agreement of
decisions only.

A/B rows count from the start of the run of deployment records with the
same mode, versions and split (the first one's `at`, against the row's
`scored_at`), and only where the arm's own version answered (a fallback
answer is not the arm's version): the split they are checked against is
the one they were routed by. Paired rows need no such cut: two versions'
scores on one event compare whatever the route.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from stream.lifecycle import experiments as ex
from stream.lifecycle.labeled import rows
from stream.serving.deployment import Deployment

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(text: str) -> int:
    """Epoch milliseconds of the ISO-8601 UTC times records and deployments carry."""
    return (datetime.fromisoformat(text) - _EPOCH) // timedelta(milliseconds=1)


def _same_experiment(a: Deployment, b: Deployment) -> bool:
    same = (a.mode, a.champion, a.challengers) == (b.mode, b.champion, b.challengers)
    return same and (a.mode != "ab" or a.share == b.share)


def run_start_ms(history: list[Deployment], current: Deployment) -> int | None:
    """When the current experiment began: `at` of the first record of its run (None when unknown)."""
    ordered = sorted(history, key=lambda d: d.seq)
    first = current
    for record in reversed(ordered):
        if record.seq > current.seq:
            continue
        if not _same_experiment(record, current):
            break
        first = record
    return _ms(first.at) if first.at else None


def thresholds_seen(records: list[dict]) -> dict[str, float]:
    """Each version's threshold as the rows it answered carry it."""
    out = {}
    for r in records:
        if r.get("threshold") is not None and r.get("model_version"):
            out[r["model_version"]] = float(r["threshold"])
    return out


def _labels(selected: list[dict]) -> np.ndarray:
    return np.array([r["label"] for r in selected], dtype=np.float64)


def paired(records: list[dict], champion: str, challenger: str, thresholds: dict[str, float]) -> ex.Paired:
    both = [r for r in records if (r.get("scores") or {}).get(champion) is not None
            and r["scores"].get(challenger) is not None]
    labeled = [r for r in both if r.get("label") is not None]
    out = ex.Paired()
    if labeled:
        out.update(_labels(labeled), [r["scores"][champion] for r in labeled], [r["scores"][challenger] for r in labeled])
    if both and champion in thresholds and challenger in thresholds:
        out.observe_decisions([r["scores"][champion] for r in both], [r["scores"][challenger] for r in both],
                              thresholds[champion], thresholds[challenger])
    return out


def unpaired(records: list[dict], deployment: Deployment, start_ms: int | None) -> ex.Unpaired:
    champion, challenger = deployment.champion, deployment.challengers[0]
    arm_version = {"ab:A": champion, "ab:B": challenger}
    chosen = [
        r for r in records
        if r.get("label") is not None and arm_version.get(r.get("route")) == r.get("model_version")
        and (r.get("scores") or {}).get(r["model_version"]) is not None
        and (start_ms is None or _ms(r["scored_at"]) >= start_ms)
    ]
    out = ex.Unpaired(share_b=deployment.share)
    if chosen:
        out.update(_labels(chosen), [r["scores"][r["model_version"]] for r in chosen],
                   [r["route"] == "ab:B" for r in chosen])
    return out


def report(records: list[dict], history: list[Deployment], id_field: str, thresholds: dict[str, float] | None = None,
           settings: ex.Settings | None = None) -> dict:
    """{"deployment": what serves, "experiments": one report per challenger} (see experiments.Paired.report)."""
    current = max(history, key=lambda d: d.seq)
    latest = list(rows(records, id_field).values())
    known = {**thresholds_seen(latest), **(thresholds or {})}
    head = {"seq": current.seq, "mode": current.mode, "champion": current.champion,
            "challengers": list(current.challengers), "share": current.share}
    out = []
    for challenger in current.challengers:
        if current.mode == "ab":
            result = unpaired(latest, current, run_start_ms(history, current)).report(settings)
        else:
            result = paired(latest, current.champion, challenger, known).report(settings)
        out.append({"champion": current.champion, "challenger": challenger, **result})
    return {"deployment": head, "experiments": out}
