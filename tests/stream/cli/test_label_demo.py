"""`sluice demo --labels`, small: its closing JSON line, every number read back, and what they must satisfy."""

from __future__ import annotations

import json
import re

from fraud_demo.labels import run_label_demo
from fraud_demo.prepare import Prepared
from stream.settings import Settings
from tests.conftest import NOW, ROOT

KEYS = [
    "events", "predictions", "labels_sent", "labels_joined", "labels_duplicate", "labels_corrected", "labels_unmatched",
    "predictions_unlabeled", "pending_bytes_per_prediction", "auc_online", "auc_offline_same_rows",
    "skew_values_checked", "skew_mismatches",
]


def test_the_label_demo_ends_with_counts_that_add_up_and_no_skew(broker, own_topic_repo, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo writes its dataset under .sluice/run
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, repo_path=ROOT / "feature_repo")
    r = own_topic_repo
    prepared = Prepared(r["path"], r["model_dir"], r["topic"], r["world"], r["cfg"], r["result"], NOW)
    code = run_label_demo(settings, events=3000, rate=0, seed=5, day_s=0.05, prepared=prepared)
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    # Predictions stored waiting for their label, read from the changelog (to its end, not until quiet).
    pending = int(re.search(r"([\d,]+) pending predictions in the changelog", out).group(1).replace(",", ""))
    assert 0 < pending <= 3000
    assert list(line) == KEYS
    assert code == 0
    assert line["events"] == line["predictions"] == 3000
    sent = line["labels_joined"] + line["labels_duplicate"] + line["labels_corrected"] + line["labels_unmatched"]
    assert line["labels_sent"] == sent
    assert line["labels_duplicate"] > 0 and line["labels_corrected"] > 0 and line["labels_unmatched"] >= 20
    assert line["labels_joined"] + line["predictions_unlabeled"] == line["predictions"]
    assert line["auc_online"] == line["auc_offline_same_rows"]
    assert line["skew_mismatches"] == 0 and line["skew_values_checked"] == 3000 * 18
    assert 100 < line["pending_bytes_per_prediction"] < 1000
    assert (tmp_path / ".sluice/run/labeled").is_dir()
    # Training from the dataset: the vectors that were served, the same metadata as `sluice train`.
    from stream.lifecycle.labeled_train import read_dataset, train_from_labeled

    result = train_from_labeled(r["path"], tmp_path / "models", tmp_path / ".sluice/run/labeled", num_trees=10, alias=None)
    rows = read_dataset(tmp_path / ".sluice/run/labeled", "transaction_id")
    assert result.rows == int(rows["label"].notna().sum()) == 3000
    assert result.positives == int((rows["label"] == 1).sum())
    assert set(result.meta) >= set(r["result"].meta) and "labeled dataset" in result.meta["label_definition"]
