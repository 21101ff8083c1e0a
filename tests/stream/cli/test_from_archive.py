"""`sluice backfill` and `sluice train` from the events archive: the served features, and a line saying which order."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pandas as pd

from stream.cli.main import main
from stream.lifecycle.archive_history import EVENT_TIME_NOTE
from tests.stream.archived_runs import ArchivedRun


def _served(run: ArchivedRun) -> pd.DataFrame:
    """The prediction log's windowed features by (partition, offset) of each event."""
    rows = [{"partition": r["arrival"][0][0], "offset": r["arrival"][0][1], **r["features"]} for r in run.log]
    return pd.DataFrame(rows).set_index(["partition", "offset"]).sort_index()


def test_backfill_from_the_archive_gives_the_served_values_and_says_so(archived_run_1, tmp_path, capsys):
    run = archived_run_1
    out = tmp_path / "backfill.parquet"
    assert main(["backfill", "--repo", str(run.repo["path"]), "--from-archive", str(run.archive), "--output", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"features in arrival order (arrival: archive {run.archive})"
    backfilled = pd.read_parquet(out).set_index(["partition", "offset"]).sort_index()
    served = _served(run)
    names = [c for c in backfilled if "__" in c]
    assert len(names) == 15 and len(backfilled) == len(served) == run.events
    assert np.allclose(backfilled[names].to_numpy(), served.loc[backfilled.index, names].to_numpy(dtype=float),
                       rtol=1e-9, atol=1e-9, equal_nan=True)

    # The same events as a plain history: event-time order, said in one line, and merchant counts differ.
    history = tmp_path / "history.parquet"
    plain = pd.read_parquet(out)[["transaction_id", "event_time"]].merge(
        pd.DataFrame([orjson.loads(orjson.dumps(r["event"])) for r in run.log]).drop(columns="event_time"),
        on="transaction_id",
    )
    plain.to_parquet(history)
    assert main(["backfill", "--repo", str(run.repo["path"]), "--history", str(history), "--output", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == EVENT_TIME_NOTE
    by_time = pd.read_parquet(out).set_index("transaction_id")["merchant_txn__merchant_txn_count_1h"]
    by_arrival = pd.Series({r["transaction_id"]: r["features"]["merchant_txn__merchant_txn_count_1h"] for r in run.log})
    assert (by_time.loc[by_arrival.index] != by_arrival).any()


def test_train_from_the_archive_records_the_arrival_order(archived_run_1, tmp_path, capsys):
    run = archived_run_1
    labels = pd.DataFrame({
        "transaction_id": [r["transaction_id"] for r in run.log],
        # A rule of the data itself, so that there is something to learn: large amounts are "fraud".
        "is_fraud": [int(r["event"]["amount"] > 150) for r in run.log],
    })
    labels.to_parquet(tmp_path / "labels.parquet")
    models = tmp_path / "models"
    argv = ["train", "--repo", str(run.repo["path"]), "--model-dir", str(models), "--labels", str(tmp_path / "labels.parquet"),
            "--trees", "5", "--alias", "none"]
    assert main([*argv, "--from-archive", str(run.archive)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"features in arrival order (arrival: archive {run.archive})"
    meta = json.loads(next(models.glob("*/model.json")).read_text())
    assert meta["feature_order"] == f"arrival: archive {run.archive}"
    assert meta["rows"]["train"] + meta["rows"]["validation"] == run.events
