"""`labeled` records of a shadow experiment, for the services that show the report (monitor gauges, status page)."""

from __future__ import annotations

import numpy as np

from stream.serving.deployment import Deployment
from tests.stream.lifecycle.test_experiment_report import START, _record, _scores

#: v1 serves alone, then v2 shadows it: what the records below are compared under.
SHADOW = (Deployment(seq=1, champion="v1", at=START.isoformat()),
          Deployment(seq=2, champion="v1", mode="shadow", challengers=("v2",), at=START.isoformat()))


def shadow_records(id_field: str, n: int, seed: int, correct_every: int) -> list[dict]:
    """Every event answered by v1 and scored by both (v2 the better); every `correct_every`-th label corrected later."""
    y, v1, v2 = _scores(np.random.default_rng(seed), n)
    t0 = int(START.timestamp() * 1000)
    records = []
    for i in range(n):
        common = dict(version="v1", route="champion", scores={"v1": float(v1[i]), "v2": float(v2[i])}, threshold=0.3,
                      at=t0 + i * 1000)
        records.append(_record(id_field, f"e{i}", label=float(y[i]), **common))
        if i % correct_every == 1:
            records.append(_record(id_field, f"e{i}", kind="correction", label=1 - y[i], revision=2,
                                   previous=(y[i], "label"), **common))
    return records
