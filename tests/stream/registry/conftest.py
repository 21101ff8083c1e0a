"""Model stores to test: tiny real LightGBM models, and a factory for each backend (one MLflow database per session)."""

from __future__ import annotations

import shutil
import uuid

import numpy as np
import pytest

FEATURES = ("a", "b", "c", "d")


def small_booster(seed: int = 0, trees: int = 8):
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(FEATURES)))
    y = (x[:, 0] + rng.normal(size=len(x)) > 0).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 7, "seed": seed, "deterministic": True, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(x, y, feature_name=list(FEATURES)), num_boost_round=trees)


@pytest.fixture(scope="session")
def boosters():
    """Three different small models."""
    return [small_booster(seed) for seed in range(3)]


def meta_for(i: int, **extra) -> dict:
    return {"feature_service": "svc", "threshold": 0.5 + i / 100, "metrics": {"auc": 0.9 - i / 100},
            "params": {"num_leaves": 7, "trees": 8 + i}, "trigger": "test", **extra}


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    """An empty MLflow database with its tables made (seconds of migrations), copied by the fixtures below."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}").search_registered_models()
    return path


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory, mlflow_template):
    """One SQLite MLflow registry for the session; tests use their own model names in it."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    shutil.copyfile(mlflow_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def new_mlflow_uri(tmp_path, mlflow_template):
    """A registry of the test's own (empty)."""
    path = tmp_path / "own-mlflow" / "mlflow.db"
    path.parent.mkdir()
    shutil.copyfile(mlflow_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def make_store(tmp_path, request):
    """Factory: kind "local" or "mlflow" -> an empty store of that kind."""

    def make(kind: str):
        from stream.registry import open_store

        if kind == "local":
            return open_store(tmp_path / f"models-{uuid.uuid4().hex[:6]}")
        uri = request.getfixturevalue("mlflow_uri")  # only MLflow tests pay for its database
        return open_store(f"mlflow:{uri}", name=f"m-{uuid.uuid4().hex[:8]}")

    return make
