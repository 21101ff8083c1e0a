"""The compiled scorer answers only after its scores equalled LightGBM's on every row of the gate."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from stream import metrics
from stream.serving import compiled
from stream.serving.compiled import CompiledScorer, with_compiled
from stream.serving.model import Model, load_model

BATCH = 300


@pytest.fixture(scope="module")
def small_model():
    """A real LightGBM model on synthetic rows with missing values; quick to train and to score."""
    import lightgbm as lgb

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 6))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * x[:, 2].clip(-1, 1) > 0.3).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "num_threads": 1, "seed": 1}
    booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=20)
    names = tuple(booster.feature_name())
    return Model("v1", names, 0.5, {"features": list(names)}, booster), x


def gated(model: Model, gate_rows: int, scores) -> Model:
    """`model` behind a gate whose compiled scorer is `scores` (a function of the matrix), compiled already."""
    wrapped = with_compiled(model, gate_rows, compiler=lambda text: scores)
    assert wrapped.compiled.wait_compiled(10)
    return wrapped


def refused_count() -> float:
    return metrics.COMPILED_SCORER.labels(compiled.REFUSED)._value.get()


def test_a_scorer_that_differs_on_one_row_is_refused_and_lightgbm_keeps_answering(small_model, caplog):
    model, x = small_model
    wrong_row = BATCH + 17

    def wrong(matrix):
        scores = model.lightgbm(matrix)
        if len(matrix) > 17 and np.array_equal(matrix[17], x[wrong_row], equal_nan=True):
            scores[17] += 2e-12  # just beyond the tolerance, on one row of the second batch
        return scores

    served = gated(model, 10 * BATCH, wrong)
    before = refused_count()
    with caplog.at_level(logging.INFO, logger="sluice.serving"):
        for lo in range(0, 4 * BATCH, BATCH):
            assert np.array_equal(served.predict(x[lo : lo + BATCH]), model.lightgbm(x[lo : lo + BATCH]))
    assert served.compiled.state == compiled.REFUSED
    assert served.compiled.compared == 2 * BATCH  # the batch with the wrong row was the last one compared
    assert refused_count() == before + 1
    (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert f"1 of {2 * BATCH} rows compared differ" in line and "v1" in line


def test_an_exact_scorer_answers_after_the_gate_rows_and_a_new_load_gates_anew(small_model):
    model, x = small_model
    calls = []

    def exact(matrix):
        calls.append(len(matrix))
        return model.lightgbm(matrix)

    served = gated(model, 4 * BATCH - 50, exact)
    for lo in range(0, 3 * BATCH, BATCH):
        served.predict(x[lo : lo + BATCH])
    assert served.compiled.state == compiled.GATING  # 900 rows of 1,150: LightGBM still answers
    served.predict(x[3 * BATCH : 4 * BATCH])
    assert served.compiled.state == compiled.SERVING
    answered = served.predict(x[:5])
    assert calls[-1] == 5 and np.array_equal(answered, model.lightgbm(x[:5]))
    again = gated(model, 4 * BATCH - 50, exact)  # a hot swap loads the version anew: a gate of its own
    assert again.compiled.state == compiled.GATING and again.compiled.compared == 0
    assert with_compiled(model, 0) is model


def test_a_compiler_that_fails_leaves_lightgbm_answering(small_model):
    model, x = small_model

    def broken(text):
        raise ImportError("No module named 'lleaves'")

    served = with_compiled(model, 100, compiler=broken)
    assert served.compiled.wait_compiled(10)
    assert served.compiled.state == compiled.UNAVAILABLE
    assert np.array_equal(served.predict(x[:BATCH]), model.lightgbm(x[:BATCH]))


def test_lleaves_scores_equal_lightgbm_on_real_rows(trained_repo):
    """The demo model on its own training rows, and on the same rows with a tenth of the values missing."""
    from features.feast_repo import load_plan, open_store
    from stream.lifecycle.train import training_frame

    plan = load_plan(open_store(trained_repo["path"]))
    model = load_model(trained_repo["model_dir"], expected_features=plan.vector, check_in_child=False)
    real = training_frame(trained_repo["path"], None, None, None).x.to_numpy(dtype=np.float64)
    holes = real.copy()
    holes[np.random.default_rng(5).random(real.shape) < 0.1] = np.nan
    rows = np.vstack([real, holes])
    served = with_compiled(model, len(rows))
    assert served.compiled.wait_compiled(120)
    assert served.compiled.state == compiled.GATING, "lleaves did not compile the demo model"
    for lo in range(0, len(rows), 500):
        served.predict(rows[lo : lo + 500])
    assert served.compiled.state == compiled.SERVING, f"compiled scorer {served.compiled.state}"
    assert np.max(np.abs(served.predict(rows) - model.lightgbm(rows))) <= compiled.TOLERANCE
    assert isinstance(served.compiled, CompiledScorer) and len(rows) > 2000


def test_a_compiled_scorer_that_raises_after_the_gate_is_refused_and_lightgbm_answers_that_batch(small_model):
    model, x = small_model
    calls = []

    def fails_later(matrix):
        calls.append(len(matrix))
        if len(calls) > 2:
            raise ValueError("Data must be of dimension (N, 6)")
        return model.lightgbm(matrix)

    served = gated(model, 2 * BATCH, fails_later)
    before = refused_count()
    for lo in range(0, 2 * BATCH, BATCH):
        served.predict(x[lo : lo + BATCH])
    assert served.compiled.state == compiled.SERVING
    assert np.array_equal(served.predict(x[:BATCH]), model.lightgbm(x[:BATCH]))
    assert served.compiled.state == compiled.REFUSED and refused_count() == before + 1
    served.predict(x[:BATCH])
    assert len(calls) == 3  # refused for good: never called again
