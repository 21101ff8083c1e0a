"""`sluice demo --labels --explore SHARE`: blocked transactions get no chargeback; exploration makes them estimable.

The label demo, with two changes that make it fraud as it is: the champion
serves under a deployment that explores (`SHARE` of would-be blocks let
through, by a hash of the transaction id), and a chargeback is sent only for
a transaction that went through: a blocked payment never happened, so no
label can follow it. The generator knows the truth of every transaction, so
the closing line can compare, for the blocking decisions the model made
(would-be blocks), the true precision and recall with what the labels alone
give, counted as they come (naive) and weighted by 1/propensity (IPW,
stream/lifecycle/ipw.py), as the online evaluation reports them.
"""

from __future__ import annotations

import numpy as np

from stream.kafka.control import publish
from stream.lifecycle.ipw import estimate
from stream.lifecycle.labeled import rows
from stream.lifecycle.online_eval import OnlineEvaluation
from stream.pipeline.records import exploration
from stream.serving.deployment import Deployment


def deploy(bootstrap: str, topic: str, champion: str, share: float, seed: int) -> Deployment:
    """The deployment the demo's worker applies when it starts: the champion, exploring `share` of its blocks."""
    record = Deployment(seq=1, champion=champion, exploration={"share": share, "seed": seed},
                        reason=f"demo: explore {share:g} of would-be blocks", by="sluice demo")
    publish(bootstrap, topic, record)
    return record


def let_through(labels: list, log: list[dict], id_field: str) -> list:
    """The labels a card network would send: none for a transaction that was blocked (ghost labels stay)."""
    blocked = {str(r[id_field]) for r in log if r["decision"]}
    return [label for label in labels if label[1] not in blocked]


def report(log: list[dict], truth, labeled: list[dict], id_field: str, version: str, label_window_ms: int) -> dict:
    """True, naive and IPW precision and recall of the would-be blocks, and the counts behind them."""
    fraud = dict(zip(truth["transaction_id"].astype(str), truth["is_fraud"].astype(int)))
    would_block = np.array([exploration(r)[0] for r in log])
    y = np.array([fraud[str(r[id_field])] for r in log])
    tp = float(np.sum(would_block & (y == 1)))
    evaluation = OnlineEvaluation(id_field, label_window_ms=label_window_ms)
    for record in labeled:
        evaluation.add_labeled(record)
    online = evaluation.combined_decisions(version).values()
    explored = [r for r in log if exploration(r)[1]]
    return {
        "would_block": int(would_block.sum()),
        "explored": len(explored),
        "explored_fraud": int(sum(fraud[str(r[id_field])] for r in explored)),
        "true": {"precision": tp / max(would_block.sum(), 1), "recall": tp / max(y.sum(), 1)},
        "naive": online["naive"],
        "ipw": online["ipw"],
        "ipw_same_rows": estimate(*_rows(labeled, id_field))["ipw"],  # the same, from each event's row as arrays
    }


def _rows(labeled: list[dict], id_field: str):
    final = [r for r in rows(labeled, id_field).values() if r.get("label") is not None and "propensity" in r]
    flags = [exploration(r) for r in final]
    return [f[0] for f in flags], [f[1] for f in flags], [f[2] for f in flags], [r["label"] for r in final]


def describe(blocking: dict) -> None:
    """The comparison, readably, before the JSON line."""
    print(f"  blocking decisions: {blocking['would_block']:,} would-be blocks, {blocking['explored']:,} let through "
          f"by exploration ({blocking['explored_fraud']:,} of them fraud)", flush=True)
    for name in ("true", "naive", "ipw"):
        values = blocking[name]
        print(f"    {name:<6} precision {values['precision']:.3f}  recall {values['recall']:.3f}", flush=True)
