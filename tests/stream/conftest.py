"""Fixtures of the stream tests: the demo plan and model, engines over them."""

from __future__ import annotations

import pytest

from features.feast_repo import load_plan, open_store
from stream.kafka.topics import AppTopics
from stream.pipeline.engine import Engine
from stream.serving.model import load_model
from stream.settings import Settings
from tests.stream.archived_runs import archived_run_1, archived_run_4  # noqa: F401 - session fixtures
from tests.stream.outcomes import PARTITIONS


@pytest.fixture(scope="module")
def demo(trained_repo):
    plan = load_plan(open_store(trained_repo["path"]))
    model = load_model(trained_repo["model_dir"], expected_features=plan.vector)
    return plan, model


@pytest.fixture
def make_engine(demo):
    plan, model = demo

    def make(**limits) -> Engine:
        return Engine(plan, AppTopics.for_plan(Settings(app_id="t"), plan), "t", model=model, batch_cache=None, n_sources=PARTITIONS, **limits)

    return make


@pytest.fixture
def model_versions(trained_repo, tmp_path):
    """A model directory with the trained repo's champion (v1) and a second version of it (v2): (dir, v1, v2)."""
    import json
    import shutil

    models = tmp_path / "models"
    shutil.copytree(trained_repo["model_dir"], models)
    v1 = (models / "champion").read_text().strip()
    v2 = v1 + "-b"
    shutil.copytree(models / v1, models / v2)
    meta = json.loads((models / v2 / "model.json").read_text())
    (models / v2 / "model.json").write_text(json.dumps(dict(meta, version=v2)))
    return models, v1, v2
