"""A Feast repo Sluice cannot serve as it is stops the command with one sentence naming the fix.

Each case runs the CLI as a user does (`sluice worker ...`, `sluice train`)
and checks the exit code (2), the message and that no traceback is printed.
The worker points at a closed port: every case must be decided before
Kafka is contacted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, timedelta
from pathlib import Path

import pytest

from tests.conftest import NOW, ROOT

SLUICE = str(Path(sys.executable).parent / "sluice")


@pytest.fixture(scope="module")
def applied_repo(tmp_path_factory):
    """A small copy of the demo repo, data written and `feast apply` run (no model)."""
    from fraud_demo.generator import DemoConfig, generate_transactions, make_world, write_repo_data
    from fraud_demo.prepare import copy_repo
    from stream.feast import repo

    path = copy_repo(ROOT / "feature_repo", tmp_path_factory.mktemp("applied") / "feature_repo")
    cfg = DemoConfig(seed=3, n_cards=50, n_merchants=10)
    world = make_world(cfg)
    history, labels = generate_transactions(world, cfg, NOW - timedelta(days=1), NOW, id_prefix="h")
    write_repo_data(path, world, history, labels)
    repo.apply(path)
    return path


@pytest.fixture
def repo_copy(applied_repo, tmp_path):
    """A copy of the applied repo with every file's modification time kept."""
    dest = tmp_path / "feature_repo"
    shutil.copytree(applied_repo, dest)  # copy2: mtimes preserved
    return dest


def sluice(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=180, env=env, cwd=cwd)


#: A reachable broker (the session's): a worker checks the broker first, then the repo and the model.
BOOTSTRAP: list[str] = []


@pytest.fixture(autouse=True)
def _reachable_broker(broker):
    BOOTSTRAP[:] = [broker.bootstrap_servers]


def worker(repo: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return sluice(
        "worker", "--repo", str(repo), "--bootstrap-servers", BOOTSTRAP[0], "--metrics-port", "0",
        "--model-dir", str(tmp_path / "no-models"), *extra,
    )


def assert_refused(proc: subprocess.CompletedProcess, *phrases: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("sluice: error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def test_a_sound_repo_gets_past_the_checks(repo_copy, tmp_path):
    # The next thing the worker needs is a model: the repo itself was accepted.
    assert_refused(worker(repo_copy, tmp_path), "no model at", "sluice train")


def test_a_missing_repo_directory(tmp_path):
    missing = tmp_path / "nowhere"
    assert_refused(worker(missing, tmp_path), str(missing), "does not exist", "--repo")


def test_a_directory_without_feature_store_yaml(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_refused(worker(tmp_path / "empty", tmp_path), "feature_store.yaml", "feast init")


def test_feature_store_yaml_that_is_not_yaml(repo_copy, tmp_path):
    (repo_copy / "feature_store.yaml").write_text("project: card_fraud\nregistry: [data/registry.db\n")
    assert_refused(worker(repo_copy, tmp_path), "feature_store.yaml", "not valid YAML", "line")


def test_feature_store_yaml_that_feast_rejects(repo_copy, tmp_path):
    text = (repo_copy / "feature_store.yaml").read_text().replace("type: sqlite", "type: nosuch")
    (repo_copy / "feature_store.yaml").write_text(text)
    assert_refused(worker(repo_copy, tmp_path), "feature_store.yaml", "not a configuration Feast accepts", "nosuch")


def test_a_repo_that_was_never_applied(repo_copy, tmp_path):
    registry = repo_copy / "data" / "registry.db"
    registry.unlink()
    message = assert_refused(worker(repo_copy, tmp_path), "never been applied", f"cd {repo_copy} && feast apply")
    assert "--feature-service" not in message
    assert not registry.exists(), "opening the repo must not create an empty registry"
    # `sluice train` says the same.
    assert_refused(sluice("train", "--repo", str(repo_copy), "--model-dir", str(tmp_path / "m")), "feast apply")


def test_definitions_changed_after_apply_are_refused_until_applied(repo_copy, tmp_path):
    definitions = repo_copy / "fraud_features.py"
    time.sleep(0.01)
    definitions.write_text(definitions.read_text() + "\n# a later edit\n")
    assert_refused(
        worker(repo_copy, tmp_path), "fraud_features.py", "changed after", f"cd {repo_copy} && feast apply"
    )
    assert_refused(sluice("train", "--repo", str(repo_copy), "--model-dir", str(tmp_path / "m")), "changed after")
    from stream.feast import repo

    repo.apply(repo_copy)
    assert_refused(worker(repo_copy, tmp_path), "no model at")


def test_a_changed_feature_store_yaml_is_refused(repo_copy, tmp_path):
    config = repo_copy / "feature_store.yaml"
    config.write_text(config.read_text())
    future = time.time() + 5  # written after the registry, whatever the file system's time resolution
    os.utime(config, (future, future))
    assert_refused(worker(repo_copy, tmp_path), "feature_store.yaml", "changed after", "feast apply")


def test_a_syntax_error_names_file_and_line(repo_copy, tmp_path):
    definitions = repo_copy / "fraud_features.py"
    lines = definitions.read_text().splitlines()
    lines.append("def broken(:")
    definitions.write_text("\n".join(lines) + "\n")
    message = assert_refused(worker(repo_copy, tmp_path), "fraud_features.py", "syntax error", f"line {len(lines)} ")
    assert "feast apply" in message


def test_an_unknown_feature_service(repo_copy, tmp_path):
    assert_refused(
        worker(repo_copy, tmp_path, "--feature-service", "nosuch"), "no feature service 'nosuch'", "fraud_model_v1"
    )


def test_the_stale_check_is_by_modification_time_against_the_registry(repo_copy):
    """The rule, in-process: files written after the registry's last update are changes; older ones are not."""
    from features.feast_repo import StaleRepoError, open_store, registry_updated_at

    updated = registry_updated_at(repo_copy / "data" / "registry.db")
    assert updated.tzinfo is UTC or updated.utcoffset() == timedelta(0)
    open_store(repo_copy)  # fresh
    past = updated.timestamp() - 60
    os.utime(repo_copy / "fraud_features.py", (past, past))
    open_store(repo_copy)
    future = updated.timestamp() + 60
    os.utime(repo_copy / "fraud_features.py", (future, future))
    with pytest.raises(StaleRepoError, match="fraud_features.py"):
        open_store(repo_copy)
    # Files Feast ignores (.feastignore) are not definitions.
    (repo_copy / ".feastignore").write_text("fraud_features.py\n")
    os.utime(repo_copy / ".feastignore", (past, past))
    open_store(repo_copy)
