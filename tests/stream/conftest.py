"""Fixtures of the stream tests: the demo plan and model, engines over them."""

from __future__ import annotations

import pytest

from features.feast_repo import load_plan, open_store
from stream.pipeline.engine import Engine
from stream.serving.model import load_model
from stream.settings import Settings
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
        return Engine(plan, Settings().topics(plan.schema.topic), "t", model=model, batch_cache=None, n_sources=PARTITIONS, **limits)

    return make
