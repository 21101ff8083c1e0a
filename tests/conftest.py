"""Shared fixtures: one real broker per test session, real Feast repos in temp dirs."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime, timedelta
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
    """A copy of the demo feature repo reading `topic`, with its data written in."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "feature_repo" / "feature_store.yaml", dest / "feature_store.yaml")
    text = (ROOT / "feature_repo" / "fraud_features.py").read_text()
    (dest / "fraud_features.py").write_text(text.replace('topic="transactions"', f'topic="{topic}"'))
    return dest


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory):
    """A small applied + materialized demo repo with a trained model (built once)."""
    from fraud_demo.generator import DemoConfig, generate_transactions, make_world, write_repo_data
    from stream import repo
    from stream.train import train

    base = tmp_path_factory.mktemp("repo")
    topic = f"txn-{uuid.uuid4().hex[:8]}"
    path = make_repo(base / "feature_repo", topic)
    cfg = DemoConfig(seed=11, n_cards=300, n_merchants=60, fraud_card_fraction=0.05)
    world = make_world(cfg)
    history, labels = generate_transactions(world, cfg, NOW - timedelta(days=10), NOW, id_prefix="h")
    write_repo_data(path, world, history, labels)
    repo.apply(path)
    repo.materialize(path, datetime(2000, 1, 1, tzinfo=UTC), NOW, views=["card_profile"])
    model_dir = base / "models"
    result = train(path, model_dir, num_trees=30)
    return {"path": path, "topic": topic, "model_dir": model_dir, "world": world, "cfg": cfg, "result": result}
