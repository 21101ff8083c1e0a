"""`sluice materialize`: the batch views of a repo whose stream views Feast cannot materialize.

The demo repo has one batch view (card_profile, from data/cards.parquet) and
three stream views with windowed aggregations. The test changes the
parquet, runs the real command in its own interpreter, and reads the values
back through Feast's online store.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import timedelta

import pandas as pd
import pytest

from features.feast_repo import open_store
from stream.cli import main
from tests.conftest import NOW, ROOT

FEATURES = ("account_age_days", "credit_limit", "home_country", "is_premium")
CARDS = ("card-000000", "card-000007", "card-000123", "card-000299")


@pytest.fixture
def repo_copy(trained_repo, tmp_path):
    path = tmp_path / "feature_repo"
    # copytree keeps modification times: the copy is as applied as the original.
    shutil.copytree(trained_repo["path"], path)
    return path


def _sluice(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "stream.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _online(path, cards=CARDS) -> pd.DataFrame:
    store = open_store(path)
    response = store.get_online_features(
        features=[f"card_profile:{f}" for f in FEATURES], entity_rows=[{"card_id": c} for c in cards]
    )
    return pd.DataFrame(response.to_dict()).set_index("card_id")[list(FEATURES)]


def _rewrite_cards(path, *, at, credit_bump: float) -> pd.DataFrame:
    """New profile values for every card, stamped `at`; returns them by card."""
    cards = pd.read_parquet(path / "data" / "cards.parquet")
    cards["credit_limit"] = cards["credit_limit"] + credit_bump + cards.index.to_numpy()
    cards["account_age_days"] = cards["account_age_days"] + 1
    cards["home_country"] = cards["home_country"].str.lower()
    cards["event_timestamp"] = pd.Timestamp(at)
    cards.to_parquet(path / "data" / "cards.parquet", index=False)
    return cards.set_index("card_id")


def _assert_online_equals(path, expected: pd.DataFrame) -> None:
    online = _online(path)
    for card in CARDS:
        for feature in FEATURES:
            got, want = online.at[card, feature], expected.at[card, feature]
            assert got == want, f"{card} {feature}: online {got!r}, offline source {want!r}"


def test_materialize_writes_the_batch_views_online(repo_copy):
    path = repo_copy
    before = pd.read_parquet(path / "data" / "cards.parquet").set_index("card_id")
    # The trained repo was materialized when it was prepared: today's values are the old ones.
    _assert_online_equals(path, before)

    changed = _rewrite_cards(path, at=NOW - timedelta(days=1), credit_bump=1000.25)
    proc = _sluice("materialize", "--repo", str(path), "2026-10-01", NOW.isoformat())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # one view, one line; no stream view is touched
    assert lines[0].startswith("card_profile: 2026-10-01 00:00:00 to 2026-11-01 00:00:00 UTC ("), lines[0]
    _assert_online_equals(path, changed)
    assert (changed.loc[list(CARDS), "credit_limit"] != before.loc[list(CARDS), "credit_limit"]).all()

    # Incremental: from where the last run ended (NOW) up to the given end.
    later = _rewrite_cards(path, at=NOW + timedelta(hours=1), credit_bump=7.5)
    end = NOW + timedelta(hours=2)
    proc = _sluice("materialize", "--repo", str(path), "--incremental", end.isoformat())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [proc.stdout.splitlines()[0]]
    assert proc.stdout.startswith("card_profile: 2026-11-01 00:00:00 to 2026-11-01 02:00:00 UTC ("), proc.stdout
    _assert_online_equals(path, later)

    # Why the command exists: Feast's own materialize of every view (what
    # `feast materialize START END` without -v runs) fails on the stream views.
    store = open_store(path)
    with pytest.raises(ValueError, match="Time window aggregation is not supported in the local compute engine"):
        store.materialize(start_date=NOW - timedelta(days=30), end_date=NOW)


def test_materialize_refuses_a_windowed_stream_view(repo_copy, capsys):
    code = main(["materialize", "--repo", str(repo_copy), "-v", "card_txn", "2026-10-01", NOW.isoformat()])
    assert code == 2
    err = capsys.readouterr().err
    assert "card_txn is a stream feature view with windowed aggregations" in err
    assert "(card_profile)" in err


def test_materialize_needs_an_interval(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["materialize", "--repo", "feature_repo", "2026-10-01"])
    assert exc.value.code == 2
    assert "give START and END (or --incremental END)" in capsys.readouterr().err
