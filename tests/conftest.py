"""Shared fixtures: one real broker per test session, real Feast repos in temp dirs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stream.kafka.broker import EmbeddedBroker

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


@pytest.fixture
def demo_repo_copy():
    """Factory: `(dest, topic) -> path`, a copy of the demo repo's definitions reading `topic` (not applied)."""
    return make_repo


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory):
    """A small applied + materialized demo repo with a trained model (built once)."""
    from fraud_demo.generator import DemoConfig
    from fraud_demo.prepare import prepare

    base = tmp_path_factory.mktemp("repo")
    # Legit labels after 12 h, not the default 7 days: training keeps only rows whose labels are final,
    # and 10 days of history with a 7-day label window leave 3 days, with no fraud in the validation fifth.
    cfg = DemoConfig(seed=11, n_cards=300, n_merchants=60, fraud_card_fraction=0.05, legit_label_delay=timedelta(hours=12))
    p = prepare(ROOT / "feature_repo", base, cfg, history_days=10, history_end=NOW, topic=f"txn-{uuid.uuid4().hex[:8]}", trees=30)
    return {"path": p.path, "topic": p.topic, "model_dir": p.model_dir, "world": p.world, "cfg": cfg, "result": p.trained}


@pytest.fixture
def start_worker(broker, tmp_path, unique):
    """Factory: a `sluice worker` process on the session broker, stopped after the test."""
    from stream.tools.process import WorkerProcess, worker_process

    started = []

    def start(repo, *, env: dict | None = None, app_id: str | None = None) -> WorkerProcess:
        n = len(started)
        # Each worker its own data directory (RocksDB locks its files); a
        # test that restarts "the same" worker passes its own SLUICE_DATA_DIR.
        proc = worker_process(
            broker.bootstrap_servers, repo["path"], repo["model_dir"], tmp_path, f"worker-{n}",
            app_id=app_id or unique("worker"), env=env,
        )
        started.append(proc)
        proc.start().wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def own_topic_repo(trained_repo, tmp_path, unique):
    """The trained repo reading an events topic of its own.

    Workers of a new consumer group read their topic from the start, so on
    the shared topic they would fold in every earlier test's events, whose
    later event times would make this test's events late.
    """
    import shutil

    from stream.feast import repo

    topic = unique("own")
    path = tmp_path / "own_repo"
    shutil.copytree(trained_repo["path"], path, ignore=shutil.ignore_patterns("registry.db"))
    definitions = next(p for p in path.glob("*.py") if trained_repo["topic"] in p.read_text())
    definitions.write_text(definitions.read_text().replace(f'topic="{trained_repo["topic"]}"', f'topic="{topic}"'))
    repo.apply(path)
    return {**trained_repo, "path": path, "topic": topic}

