"""`sluice demo --labels --explore`, small: blocked transactions get no chargeback; the weighted estimate and training use
the logged propensity."""

from __future__ import annotations

import json
import math

import numpy as np

from fraud_demo.labels import run_label_demo
from fraud_demo.prepare import Prepared
from stream.lifecycle.ipw import training_weights
from stream.settings import Settings
from tests.conftest import NOW, ROOT


def test_the_exploring_label_demo_compares_true_naive_and_weighted_and_trains_with_weights(
    broker, own_topic_repo, capsys, tmp_path, monkeypatch,
):
    monkeypatch.chdir(tmp_path)
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, repo_path=ROOT / "feature_repo")
    r = own_topic_repo
    prepared = Prepared(r["path"], r["model_dir"], r["topic"], r["world"], r["cfg"], r["result"], NOW)
    code = run_label_demo(settings, events=3000, rate=0, seed=6, day_s=0.05, prepared=prepared, explore=0.5)
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    assert code == 0, out
    blocking = line["blocking"]
    assert "blocking decisions:" in out and "ipw" in out
    assert blocking["would_block"] > 0 and 0 < blocking["explored"] < blocking["would_block"]
    assert line["labels_joined"] + line["predictions_unlabeled"] == line["predictions"] == 3000
    # The streaming sums of the online evaluation equal the estimator over each event's row.
    for name in ("precision", "recall"):
        a, b = blocking["ipw"][name], blocking["ipw_same_rows"][name]
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12

    from stream.lifecycle.labeled_train import labeled_training_frame, read_dataset, train_from_labeled

    dataset = tmp_path / ".sluice/run/labeled"
    rows = read_dataset(dataset, "transaction_id")
    blocked = rows["would_block"].fillna(False) & ~rows["explored"].fillna(False)
    assert rows.loc[blocked, "label"].isna().all(), "a blocked transaction got a label"
    frame = labeled_training_frame(r["path"], None, dataset)
    usable = rows[rows["label"].notna()]
    expected = training_weights(usable["would_block"].to_numpy(bool), usable["explored"].to_numpy(bool),
                                usable["propensity"].to_numpy(np.float64))
    assert frame.weight is not None and sorted(frame.weight.tolist()) == sorted(expected[expected > 0].tolist())
    assert (frame.weight == 2.0).sum() == blocking["explored"]  # share 0.5: each explored block counts twice
    result = train_from_labeled(r["path"], tmp_path / "models", dataset, num_trees=10, alias=None)
    assert result.meta["rows"]["train_weight"] > result.meta["rows"]["train"]
