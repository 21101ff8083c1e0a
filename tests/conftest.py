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


def _launched(make):
    """(start, started): `start(...)` makes a process with `make(n, ...)` (n: how many came before), starts it and
    waits until it is ready; the fixture stops every one in `started` after the test."""
    started = []

    def start(*args, **kwargs):
        proc = make(len(started), *args, **kwargs)
        started.append(proc)
        proc.start().wait_ready()
        return proc

    return start, started


@pytest.fixture
def start_worker(broker, tmp_path, unique):
    """Factory: a `sluice worker` process on the session broker, stopped after the test."""
    from stream.tools.process import worker_process

    def make(n: int, repo, *, env: dict | None = None, app_id: str | None = None):
        # Each worker its own data directory (RocksDB locks its files); a
        # test that restarts "the same" worker passes its own SLUICE_DATA_DIR.
        return worker_process(
            broker.bootstrap_servers, repo["path"], repo["model_dir"], tmp_path, f"worker-{n}",
            app_id=app_id or unique("worker"), env=env,
        )

    start, started = _launched(make)
    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def start_join_worker(broker, tmp_path):
    """Factory: a `sluice label-join` process (a join-only worker of app `app_id`), stopped after the test."""
    from stream.tools.process import label_join_process

    def make(n: int, repo, *, app_id: str, env: dict, metrics_port: int = 0):
        return label_join_process(broker.bootstrap_servers, repo["path"], tmp_path, f"join-{n}", app_id=app_id,
                                  metrics_port=metrics_port, env=env)

    start, started = _launched(make)
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

