"""The reasons service's step: from prediction-log records, the same reason codes the scoring batch computes inline."""

from __future__ import annotations

import numpy as np
import pytest

from stream.serving.deployment import Deployment
from stream.serving.explain import Explainer, explain_log
from stream.serving.scorer import Serving, score
from tests.stream.serving.test_scorer import NAMES, _batch, _model


@pytest.fixture(scope="module")
def models():
    return {"v1": _model("v1", 1), "v2": _model("v2", 2)}


def _logged(out, ids, matrix) -> list[dict]:
    """The prediction-log fields the step reads, as the worker writes them (missing values as null)."""
    return [
        {"id": ids[i], "model_version": out.versions[i], "decision": out.decisions[i],
         "features": {n: (None if np.isnan(v) else float(v)) for n, v in zip(NAMES, matrix[i])}}
        for i in range(len(ids))
    ]


@pytest.mark.parametrize("method", ["treeshap", "path"])
def test_the_log_gives_the_reason_codes_the_batch_computes_inline(models, method):
    matrix, records, keys, ids = _batch(600, seed=3)
    matrix[::5, 1] = np.nan
    dep = Deployment(seq=1, champion="v1", mode="canary", challengers=("v2",), share=0.5)
    inline = score(Serving(dep, models, reason_share=0.1, reason_k=3, reason_method=method), matrix, records, keys, ids,
                   [None] * len(ids))
    expected = {ids[i]: r for i, r in enumerate(inline.reasons) if r is not None}
    assert len({inline.versions[ids.index(e)] for e in expected}) == 2 and any(inline.decisions)

    explained = explain_log(_logged(inline, ids, matrix), "id", models, Explainer(3, method), share=0.1)
    assert {r["id"]: r["reasons"] for r in explained.records} == expected
    assert not explained.unexplained
    by_id = {r["id"]: r for r in explained.records}
    for i, event in enumerate(ids):
        if event in by_id:
            assert by_id[event]["model_version"] == inline.versions[i] and by_id[event]["method"] == method


def test_treeshap_reasons_are_the_top_contributions_of_the_logged_vector(models):
    matrix, records, keys, ids = _batch(200, seed=4)
    out = score(Serving(Deployment(seq=1, champion="v1"), models, reason_k=0), matrix, records, keys, ids, [None] * 200)
    explained = explain_log(_logged(out, ids, matrix), "id", models, Explainer(2))
    assert explained.records and not any(out.reasons)
    shap = models["v1"].booster.predict(matrix, pred_contrib=True)[:, :-1]
    for record in explained.records:
        row = shap[ids.index(record["id"])]
        top = np.argsort(-np.abs(row))[:2]
        assert [name for name, _ in record["reasons"]] == [NAMES[j] for j in top]
        np.testing.assert_allclose([c for _, c in record["reasons"]], row[top], atol=1e-6)


def test_would_be_blocks_rules_and_unknown_versions():
    model = _model("v1", 1)
    base = {"features": dict.fromkeys(NAMES, 0.5)}
    logs = [
        {**base, "id": "explored", "model_version": "v1", "decision": False, "would_block": True, "propensity": 0.2},
        {**base, "id": "approved", "model_version": "v1", "decision": False},
        {**base, "id": "rules", "model_version": None, "decision": True},
        {**base, "id": "gone", "model_version": "v9", "decision": True},
    ]
    explained = explain_log(logs, "id", {"v1": model}, Explainer(3))
    assert [r["id"] for r in explained.records] == ["explored"]  # explained like any block
    assert explained.records[0]["would_block"] and not explained.records[0]["decision"]
    assert explained.unexplained == [("gone", "model version v9 could not be loaded")]
    assert not explain_log(logs, "id", {"v1": model}, Explainer(0)).records
