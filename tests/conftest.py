"""Shared fixtures: one real broker per test session, real Feast repos in temp dirs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker

ROOT = Path(__file__).resolve().parent.parent
#: Fixed "now" for generated data, so runs are reproducible.
NOW = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def broker():
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def unique():
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_repo(dest: Path, topic: str) -> Path:
    """A copy of the demo feature repo's definitions, reading `topic`."""
    from fraud_demo.prepare import copy_repo

    return copy_repo(ROOT / "feature_repo", dest, topic)


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory):
    """A small applied + materialized demo repo with a trained model (built once)."""
    from fraud_demo.generator import DemoConfig
    from fraud_demo.prepare import prepare

    base = tmp_path_factory.mktemp("repo")
    cfg = DemoConfig(seed=11, n_cards=300, n_merchants=60, fraud_card_fraction=0.05)
    p = prepare(ROOT / "feature_repo", base, cfg, history_days=10, history_end=NOW, topic=f"txn-{uuid.uuid4().hex[:8]}", trees=30)
    return {"path": p.path, "topic": p.topic, "model_dir": p.model_dir, "world": p.world, "cfg": cfg, "result": p.trained}
