"""`sluice bench --quick`: every system runs end to end and the report is complete.

Only the shape of the report is checked: benchmark figures depend on the
machine, so there are no timing assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from stream.lifecycle.train import PARAMS
from tests.conftest import ROOT

SYSTEMS = ("sluice", "naive", "faust_parse", "two_workers")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _bench_report(tmp_path, *flags: str) -> dict:
    """`sluice bench --quick` with `flags`, in a process of its own: the JSON report it ends with."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "bench", "--quick", *flags, "--work-dir", str(tmp_path / "bench")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_quick_bench_reports_every_figure(tmp_path):
    report = _bench_report(tmp_path)

    for key in ("machine", "config", *SYSTEMS, "state", "offline", "ratios", "broker_hop"):
        assert key in report, key
    hop = report["broker_hop"]
    assert hop["received"] == hop["messages"] > 0
    assert 0 < hop["p50_ms"] <= hop["p99_ms"] <= hop["p999_ms"]
    assert report["machine"]["broker"] == "embedded tansu"
    assert _positive(report["machine"]["cpus"])
    assert report["config"]["model"]["trees"] == 200
    assert report["config"]["model"]["num_leaves"] == PARAMS["num_leaves"]  # the model `sluice train` makes

    for system in SYSTEMS:
        figures = report[system]
        assert figures["outputs"] == figures["events"], system
        for key in ("events_per_s", "events_per_s_from_ready", "peak_rss_mb"):
            assert _positive(figures[key]), (system, key, figures[key])
    for system in ("sluice", "faust_parse"):
        run = report[system]["latency"]["1000"]
        assert run["outputs"] == run["events"], system
        for key in ("p50_ms", "p99_ms", "p999_ms", "input_events_per_s", "output_events_per_s"):
            assert _positive(run[key]), (system, key, run[key])
    assert "1000" in report["naive"]["latency"]  # attempted or reported as saturated
    assert len(report["two_workers"]["peak_rss_mb_each"]) == 2

    state = report["state"]
    for key in ("bytes_per_entity", "python_bytes_per_entity", "rss_bytes_per_entity"):
        assert _positive(state[key]), key
    offline = report["offline"]
    for key in ("compute_features_events_per_s", "pandas_events_per_s", "compute_features_all_views_events_per_s"):
        assert _positive(offline[key]), key
    assert offline["nan_mismatches"] == 0
    assert offline["max_rel_diff"] < 1e-6
    for key, value in report["ratios"].items():
        assert _positive(value), (key, value)
    serving = report["serving"]
    for key in ("champion_only", "reasons_for_positives", "reasons_for_every_event", "one_shadow"):
        assert _positive(serving["us_per_event"][key]), key
    for key in ("model_predict_us_per_row", "path_attribution_us_per_row", "treeshap_us_per_row"):
        assert _positive(serving[key]), key
    swap = serving["deploy_to_first_prediction"]
    assert len(swap["seconds"]) == 1 and _positive(swap["median_s"])  # one swap in --quick


def test_latency_bench_runs_only_sluice_and_reports_the_brokers_cpu_beside_the_workers(tmp_path):
    report = _bench_report(tmp_path, "--latency")
    assert set(report) == {"machine", "config", "sluice"}  # no baselines, state, offline or serving figures
    run = report["sluice"]["latency"]["1000"]
    assert run["outputs"] == run["events"] > 0
    for key in ("p50_ms", "p99_ms", "system_cpu_cores", "broker_cpu_cores"):
        assert _positive(run[key]), (key, run[key])
    assert report["config"]["input_linger_ms"] == 10  # the embedded broker's (bench.EMBEDDED_INPUT_LINGER_MS)
