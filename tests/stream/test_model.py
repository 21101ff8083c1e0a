"""Models are data: verified by checksum and feature list before they are served."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from stream.model import ModelError, load_model, resolve


def test_trained_model_loads_and_matches_the_feature_service(trained_repo):
    from features.feast_repo import load_plan, open_store

    plan = load_plan(open_store(trained_repo["path"]))
    model = load_model(trained_repo["model_dir"], expected_features=plan.vector)
    assert model.features == plan.vector
    assert model.meta["validation_auc"] > 0.6
    assert set(model.meta) >= {"training_window", "label_definition", "sha256", "threshold"}


def test_a_model_whose_checksum_does_not_match_is_refused(trained_repo, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained_repo["model_dir"], models)
    model_file = resolve(models) / "model.txt"
    model_file.write_text(model_file.read_text().replace("learning_rate", "learning_rate ", 1))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model(models)


def test_the_worker_refuses_to_start_with_a_tampered_model(broker, trained_repo, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained_repo["model_dir"], models)
    model_file = resolve(models) / "model.txt"
    with open(model_file, "a") as fh:
        fh.write("\n# tampered\n")
    proc = subprocess.run(
        [
            sys.executable, "-m", "stream.cli", "worker",
            "--bootstrap-servers", broker.bootstrap_servers,
            "--repo", str(trained_repo["path"]),
            "--model-dir", str(models),
            "--metrics-port", "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "checksum mismatch" in proc.stderr


def test_a_model_trained_on_other_features_is_refused(trained_repo):
    with pytest.raises(ModelError, match="other features"):
        load_model(trained_repo["model_dir"], expected_features=("a", "b"))
