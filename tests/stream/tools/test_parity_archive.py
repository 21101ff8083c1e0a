"""`sluice parity --from-archive`: the offline side from an archive of the events topic alone, late events included."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_parity_from_the_archive_on_one_partition_matches_every_feature_and_late_event():
    """One events partition: the archive's arrival order is what every stage served (see docs/semantics.md)."""
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "parity", "--events", "400", "--partitions", "1", "--disorder-ms", "420000",
         "--from-archive"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "offline order        arrival: archive of the events topic" in proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["late"] > 0  # beyond the 5-minute allowance: late online, and from the archive too
    assert report["compared"] + report["late"] == 400
    assert report["mismatches"] == 0 and report["restarts"] == 1
