"""`sluice models` and `sluice train --registry` as an operator runs them, on a trained demo repo."""

from __future__ import annotations

import json
import shutil

import pytest

from stream.cli.main import main
from stream.registry import LocalStore
from stream.serving.model import CHAMPION_FILE, load_model


@pytest.fixture
def two_versions(trained_repo, tmp_path):
    """The demo repo's model directory plus a second version: its model with other params and threshold."""
    models = tmp_path / "models"
    shutil.copytree(trained_repo["model_dir"], models)
    store = LocalStore(models)
    v1 = store.aliases()["champion"]
    meta = store.meta(v1)
    changed = {"threshold": 0.25, "params": dict(meta["params"], num_leaves=31), "trigger": "test"}
    v2 = store.publish(store.folder(v1), changed)
    return models, v1, v2


def sluice(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_show_and_diff_say_what_each_version_is(two_versions, capsys):
    models, v1, v2 = two_versions
    code, out, _ = sluice(capsys, "models", "list", "--registry", str(models))
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["VERSION", "CREATED", "(UTC)"]
    assert [ln.split()[0] for ln in lines[1:]] == [v1, v2]
    assert "champion" in lines[1] and "active" in lines[1] and "test" in lines[2]

    code, out, _ = sluice(capsys, "models", "list", "--model-dir", str(models), "--json")
    rows = json.loads(out)
    assert [r["aliases"] for r in rows] == [["champion"], []] and rows[1]["threshold"] == 0.25

    code, out, _ = sluice(capsys, "models", "show", "champion", "--registry", str(models))
    assert code == 0
    for expected in (f"version          {v1}", "aliases          champion", "label maturity 0.5 d",
                     "rule: alert_rate target 0.50% on validation", "metrics          auc ", "top contributions"):
        assert expected in out, (expected, out)
    shown = json.loads(sluice(capsys, "models", "show", v1, "--registry", str(models), "--json")[1])
    assert shown["metrics"]["auc"] > 0.9 and len(shown["top_contributions"]) == 5 and "reference" not in shown

    code, out, _ = sluice(capsys, "models", "diff", v1, v2, "--registry", str(models))
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()[1:]}
    assert code == 0 and rows["params.num_leaves"] == ["15", "31"] and rows["threshold"][1] == "0.250000"
    assert rows["trigger"] == ["manual", "test"] and "params.learning_rate" not in rows
    assert json.loads(sluice(capsys, "models", "diff", v1, v1, "--registry", str(models), "--json")[1])["changes"] == {}


def test_promote_rollback_and_retire_move_the_champion_the_worker_reads(two_versions, capsys):
    models, v1, v2 = two_versions
    code, out, _ = sluice(capsys, "models", "promote", v2, "--registry", str(models), "--reason", "better")
    assert (code, out.strip()) == (0, f"champion: {v1} -> {v2}")
    assert (models / CHAMPION_FILE).read_text().strip() == v2
    assert load_model(models, check_in_child=False).version == v2
    code, out, _ = sluice(capsys, "models", "rollback", "--registry", str(models), "--json")
    assert code == 0 and json.loads(out) == {"action": "rollback", "alias": "champion", "old": v2, "new": v1}
    assert (models / CHAMPION_FILE).read_text().strip() == v1

    code, _, err = sluice(capsys, "models", "rollback", "--registry", str(models))
    assert code == 2 and "nothing to roll back to" in err
    code, _, err = sluice(capsys, "models", "retire", v1, "--registry", str(models))
    assert code == 2 and "is the champion" in err
    assert sluice(capsys, "models", "retire", v2, "--registry", str(models))[0] == 0
    code, _, err = sluice(capsys, "models", "promote", v2, "--registry", str(models))
    assert code == 2 and "is retired" in err
    assert [m["reason"] for m in LocalStore(models).history()][-2:] == ["better", "rolled back"]


def test_sluice_train_publishes_to_an_mlflow_registry_with_parent_and_trigger(trained_repo, tmp_path, capsys):
    uri = f"mlflow:sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, err = sluice(
        capsys, "train", "--repo", str(trained_repo["path"]), "--registry", uri, "--trees", "8", "--alert-rate", "0.01",
        "--parent", "v-earlier", "--trigger", "cli-test", "--alias", "challenger",
    )
    assert code == 0, err
    assert "alert_rate 0.01: alert rate" in out
    [row] = json.loads(sluice(capsys, "models", "list", "--registry", uri, "--json")[1])
    assert (row["aliases"], row["trigger"], row["parent"]) == (["challenger"], "cli-test", "v-earlier")
    code, _, err = sluice(capsys, "models", "rollback", "--registry", uri)
    assert code == 2 and "nothing to roll back to: champion None" in err
    assert sluice(capsys, "models", "promote", "challenger", "--registry", uri)[0] == 0
    shown = json.loads(sluice(capsys, "models", "show", "champion", "--registry", uri, "--json")[1])
    assert shown["version"] == row["version"] and shown["threshold_rule"]["target"] == 0.01
