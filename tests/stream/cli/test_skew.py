"""`sluice skew` over a real worker's prediction log and the events archive: none in arrival order, some in event time."""

from __future__ import annotations

import json
import subprocess
import sys

from stream.cli.main import main
from tests.stream.archived_runs import ArchivedRun


def _command(run: ArchivedRun, bootstrap: str) -> list[str]:
    return ["skew", "--bootstrap-servers", bootstrap, "--repo", str(run.repo["path"]), "--archive", str(run.archive),
            "--topic", run.log_topic, "--idle", "2"]


def _skew(run: ArchivedRun, bootstrap: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "stream.cli", *_command(run, bootstrap), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_no_feature_differs_in_arrival_order_and_some_do_in_event_time(broker, archived_run_4):
    report = _skew(archived_run_4, broker.bootstrap_servers)
    assert (report["records"], report["compared"], report["missing"]) == (archived_run_4.events,) * 2 + (0,)
    stage_0 = [f for f in report["features"] if f["stage"] == 0]
    assert len(stage_0) >= 10 and any(f["stage"] == 1 for f in report["features"])
    # Four partitions and a repartition hop: every stage follows the arrival clock.
    differing = [f["feature"] for f in report["features"] if f["arrival"]["differing"]]
    assert not differing, differing
    # The events arrived up to 2 minutes out of order: trained in event-time order, some card features differ.
    skewed = [f for f in stage_0 if f["event_time"]["differing"] > 0]
    assert skewed and all(f["event_time"]["mean_abs"] > 0 for f in skewed)


def test_on_one_partition_no_feature_differs_in_arrival_order(broker, archived_run_1, capsys):
    report = _skew(archived_run_1, broker.bootstrap_servers)
    assert report["compared"] == archived_run_1.events
    assert all(f["arrival"]["differing"] == 0 for f in report["features"])
    assert any(f["event_time"]["differing"] > 0 for f in report["features"] if f["stage"] == 1)

    assert main(_command(archived_run_1, broker.bootstrap_servers)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"skew of {archived_run_1.events:,} served events of {archived_run_1.log_topic}")
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert set(rows) == {f["feature"] for f in report["features"]}
    assert all(row[2] == "0.00%" for row in rows.values())


def test_the_window_keeps_event_times_from_since_up_to_until():
    from stream.cli.skew import _window

    records = [{"event_time": f"2026-11-01T00:0{m}:00.000Z", "m": m} for m in range(5)]
    assert [r["m"] for r in _window(records, "2026-11-01T00:01:00Z", "2026-11-01T00:03:00Z")] == [1, 2]
    assert [r["m"] for r in _window(records, None, "2026-11-01T00:01:00+00:00")] == [0]
    assert _window(records, None, None) == records
