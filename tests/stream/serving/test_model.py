"""Models are data: verified by checksum and feature list before they are served."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from stream.serving.model import ModelError, load_model, resolve


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


def run_worker(broker, trained_repo, models) -> subprocess.CompletedProcess:
    """`sluice worker` on the trained repo with the models in `models`; it is expected to stop by itself."""
    return subprocess.run(
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


def test_the_worker_refuses_to_start_with_a_tampered_model(broker, trained_repo, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained_repo["model_dir"], models)
    model_file = resolve(models) / "model.txt"
    with open(model_file, "a") as fh:
        fh.write("\n# tampered\n")
    proc = run_worker(broker, trained_repo, models)
    assert proc.returncode == 2
    assert "checksum mismatch" in proc.stderr


def test_a_model_trained_on_other_features_is_refused(trained_repo):
    with pytest.raises(ModelError, match="other features"):
        load_model(trained_repo["model_dir"], expected_features=("a", "b"))


# -- A model file LightGBM cannot parse ----------------------------------------
#
# The checksum only says the file is the one the metadata describes; a file
# that was truncated and then "repaired" by recomputing its sha256 passes it.
# LightGBM's parser then aborts or segfaults the process that loads it.

FEATURES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A tiny trained model (4 features, 30 trees), built once for this module."""
    import lightgbm as lgb
    import numpy as np

    from stream.serving.model import save_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(FEATURES)))
    y = (x[:, 0] + rng.normal(size=len(x)) > 0).astype(int)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 15},
        lgb.Dataset(x, y, feature_name=list(FEATURES)),
        num_boost_round=30,
    )
    models = tmp_path_factory.mktemp("small") / "models"
    save_model(models, "v1", booster, {"features": list(FEATURES), "threshold": 0.5})
    return models


def _damaged_copy(models, dest, content: bytes):
    """A copy of `models` whose model.txt is `content`, with the checksum recomputed to match."""
    import json

    from stream.serving.model import sha256_file

    shutil.copytree(models, dest)
    folder = resolve(dest)
    (folder / "model.txt").write_bytes(content)
    meta = json.loads((folder / "model.json").read_text())
    meta["sha256"] = sha256_file(folder / "model.txt")
    (folder / "model.json").write_text(json.dumps(meta))
    return dest


def _load_in_child(models) -> subprocess.CompletedProcess:
    """load_model in a separate interpreter, so a crash of the loader cannot take the test run down."""
    code = (
        "import sys\n"
        "from stream.serving.model import ModelError, load_model\n"
        "try:\n"
        "    load_model(sys.argv[1])\n"
        "except ModelError as exc:\n"
        "    print('ModelError:', exc)\n"
        "    sys.exit(3)\n"
        "print('loaded')\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(models)], capture_output=True, text=True, timeout=120)


def test_a_truncated_model_with_a_recomputed_checksum_is_refused_not_crashed_on(small_model, tmp_path):
    text = (resolve(small_model) / "model.txt").read_bytes()
    damaged = _damaged_copy(small_model, tmp_path / "models", text[: len(text) // 2])
    proc = _load_in_child(damaged)
    # Before the fix the loading process died of SIGSEGV (-11) or SIGABRT (-6), with no message.
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "LightGBM cannot parse model.txt" in proc.stdout
    assert "signal" in proc.stdout
    assert "sluice train" in proc.stdout


def test_an_empty_model_file_is_a_model_error(small_model, tmp_path):
    damaged = _damaged_copy(small_model, tmp_path / "models", b"")
    with pytest.raises(ModelError, match=r"LightGBM cannot parse model\.txt.*sluice train"):
        load_model(damaged)
    # The in-process loader is guarded too, for callers that skip the child check.
    with pytest.raises(ModelError, match=r"LightGBM cannot parse model\.txt.*sluice train"):
        load_model(damaged, check_in_child=False)


def test_a_good_model_passes_the_child_check(small_model):
    model = load_model(small_model)
    assert model.features == FEATURES
    assert load_model(small_model, check_in_child=False).features == FEATURES


def test_a_loader_that_hangs_is_given_up_on(small_model, monkeypatch):
    import stream.serving.model

    monkeypatch.setattr(stream.serving.model, "CHILD_CHECK", "import time; time.sleep(30)")
    with pytest.raises(ModelError, match=r"did not load .* within 0\.5 s"):
        load_model(small_model, child_timeout_s=0.5)


def test_the_worker_refuses_a_truncated_model_with_one_sentence(broker, trained_repo, tmp_path):
    text = (resolve(trained_repo["model_dir"]) / "model.txt").read_bytes()
    damaged = _damaged_copy(trained_repo["model_dir"], tmp_path / "models", text[: len(text) * 2 // 3])
    proc = run_worker(broker, trained_repo, damaged)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "sluice: error: model" in proc.stderr
    assert "LightGBM cannot parse model.txt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_model_whose_trailing_json_is_bad_is_a_model_error_in_process(small_model, tmp_path):
    # LightGBM reads a JSON line (pandas_categorical) at the end of the model
    # text; garbage there raised a bare JSONDecodeError from the in-process load.
    text = (resolve(small_model) / "model.txt").read_bytes()
    head, sep, _ = text.rpartition(b"pandas_categorical:")
    assert sep, "the model text has no pandas_categorical line"
    damaged = _damaged_copy(small_model, tmp_path / "models", head + sep + b"{not json\n")
    with pytest.raises(ModelError, match=r"LightGBM cannot parse model\.txt.*sluice train"):
        load_model(damaged, check_in_child=False)


def _booster(objective: str, **params):
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 6))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) > 0).astype(int) + (np.nan_to_num(x[:, 1]) > 1) * (objective == "multiclass")
    return lgb.train({"objective": objective, "verbose": -1, "num_leaves": 7, **params}, lgb.Dataset(x, y), 30), x


@pytest.mark.parametrize("rows", [slice(0, 1), slice(0, 17), slice(None)])
def test_the_native_scoring_call_scores_exactly_as_booster_predict(rows):
    import numpy as np

    from stream.serving.model import native_scores

    booster, x = _booster("binary")
    native = native_scores(booster)
    assert native is not None
    for matrix in (np.ascontiguousarray(x[rows]), np.asfortranarray(x[rows]), x[rows][::-1].copy()):
        assert native(matrix).tobytes() == np.asarray(booster.predict(matrix, num_threads=1)).tobytes()


def test_a_model_with_several_scores_per_row_is_not_scored_natively():
    from stream.serving.model import native_scores

    booster, _ = _booster("multiclass", num_class=3)
    assert native_scores(booster) is None
