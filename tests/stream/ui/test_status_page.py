"""`sluice ui` in a real browser: headless Chromium (Debian's chromium and chromium-driver) through Selenium.

Real-shaped records go to real topics on the session broker, two
worker-like processes and a monitor-like one serve `/metrics` with Sluice's
own collectors, and `sluice ui` runs as a subprocess (fixtures in
conftest.py). The page must load with nothing from
outside its own server, draw every chart, show the numbers that were
written and the ones the metrics endpoints answer, and follow new records by
itself. A screenshot is kept in tests/artifacts/ (SLUICE_TEST_ARTIFACTS
elsewhere).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream.kafka.clients import make_producer
from tests.stream.ui import records

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("SLUICE_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
N_LOGS, N_MORE = 300, 40
CHARTS = ("throughput", "latency", "outcomes", "drift", "quality", "versions")


def _produce(bootstrap: str, items) -> None:
    producer = make_producer(bootstrap)
    for topic, key, value, headers in items:
        producer.produce(topic, value, key, headers=headers)
    assert producer.flush(30) == 0


def _wait(what: str, check, timeout_s: float = 30.0, show=None):
    """Until `check()` is truthy (returned); at the timeout, fail with `show()` of the last state."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - the page may be between two renders
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f": {show()}" if show else ""))
        time.sleep(0.2)


def _api(ui: str) -> dict:
    with urllib.request.urlopen(ui + "/api/status", timeout=10) as reply:
        return orjson.loads(reply.read())


def _counts(status: dict) -> dict:
    return {
        "predictions": status["predictions"]["total"], "dlq": status["outcomes"]["dlq_total"],
        "late": status["outcomes"]["late_total"], "up": status["fleet"]["up"], "online": sorted(status["online"]),
        "deployment": status["monitoring"]["deployment"] is not None, "alerts": len(status["monitoring"]["alerts"]),
        "rates": len(status["fleet"]["rate"]["t"]), "drift": len(status["monitoring"]["heatmaps"].get("psi", {}).get("windows", [])),
    }


#: Everything the checks read, in one script: the page's own code cannot run (and redraw) in between.
READ_PAGE = """
const q = (css) => Array.from(document.querySelectorAll(css));
const numbers = {};
for (const el of q(".num")) numbers[el.id] = [el.textContent, el.dataset.value];
const table = (id) => q("#" + id + " tbody tr").map((tr) => Array.from(tr.cells).map((td) => td.textContent));
return {
  renders: Number(document.body.dataset.renders || 0),
  status_at: Number(document.body.dataset.statusAt || 0),
  numbers,
  alerts: table("table-alerts"),
  online: table("table-online"),
  online_workers: table("table-online-workers"),
  deployment: document.getElementById("deployment").textContent,
  drawn: Object.fromEntries(arguments[0].map((c) => [c, q("#chart-" + c + " svg.main-svg").length])),
  marks: {
    throughput: q("#chart-throughput .barlayer .point path").length,
    latency: q("#chart-latency .scatterlayer path.js-line").filter((p) => p.getAttribute("d")).length,
    drift: q("#chart-drift .hm image").length,
    outcomes: q("#chart-outcomes .barlayer .point path").length,
    quality: q("#chart-quality .barlayer .point path").length,
  },
  resources: performance.getEntriesByType("resource").map((e) => e.name),
  drift: (() => {
    const trace = (document.getElementById("chart-drift").data || [])[0] || {};
    return { statistic: document.getElementById("drift-statistic").value, rows: trace.y, z: trace.z,
             columns: (trace.x || []).length };
  })(),
  quality_monitor: (() => {
    const trace = (document.getElementById("chart-quality").data || [])[2] || {};
    return (trace.y || []).map((y, i) => [y, trace.x[i]]);
  })(),
};
"""


def read_page(driver) -> dict:
    return driver.execute_script(READ_PAGE, list(CHARTS))


def _scraped(urls: list[str]) -> dict[str, float]:
    """Sums over the endpoints, read here with prometheus_client's parser (not the page's)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: Counter = Counter()
    for url in urls:
        with urllib.request.urlopen(url, timeout=5) as reply:
            for family in text_string_to_metric_families(reply.read().decode()):
                for s in family.samples:
                    if s.name == "sluice_events_in_total" and s.labels.get("stage") != "0":
                        continue
                    sums[s.name] += s.value
    return sums


def _write_records(bootstrap: str, topics: dict) -> dict:
    """Every topic's records; what the page should show of them."""
    logs = records.prediction_logs(N_LOGS, seed=5)
    labeled, rows = records.labeled(logs)
    items = [(topics["log"], r["transaction_id"].encode(), orjson.dumps(r), None) for r in logs]
    for copy in records.dead_letters(topics["events"]) + records.late_copies(topics["events"]):
        items.append((copy.topic, copy.key, copy.value, copy.headers))
    items += [(topics["monitoring"], None, orjson.dumps(r), None) for r in records.alert_records()]
    items += [(topics["deployments"], b"deployment", orjson.dumps(r), None) for r in records.deployment_records()]
    items += [(topics["labeled"], key, value, None) for key, value in labeled]
    _produce(bootstrap, items)
    return {"logs": logs, "rows": rows}


def _drift_windows(ui: str, monitor) -> None:
    """The monitor judges four windows, one after the other; the heat map gains a column for each."""
    for w in range(4):
        monitor.send(records.drift_gauges(w))
        _wait(f"drift window {w} in the status", lambda: _counts(_api(ui))["drift"] == w + 1, show=lambda: _counts(_api(ui)))


def test_status_page_in_chromium(broker, topics, ui, endpoints, chromium):
    bootstrap = broker.bootstrap_servers
    written = _write_records(bootstrap, topics)
    logs, rows = written["logs"], written["rows"]
    _drift_windows(ui, endpoints["monitor"])
    driver = chromium
    driver.get(ui + "/?refresh=500")

    # Once the server has read everything, the page must show a status from after that moment.
    everything = {
        "predictions": N_LOGS, "dlq": 7, "late": records.LATE, "up": 3, "online": ["v1", "v2"], "deployment": True,
        "alerts": 1, "rates": True, "drift": 4,
    }
    at = _wait(
        "the server to read every record and endpoint",
        lambda: (s := _api(ui)) and {**_counts(s), "rates": _counts(s)["rates"] > 0} == everything and s["now_ms"],
        show=lambda: _counts(_api(ui)),
    )
    page = _wait("a render of a later status", lambda: (p := read_page(driver))["status_at"] > at and p)
    numbers = page["numbers"]

    # Nothing came from outside the page's own server.
    assert page["resources"] and all(r.startswith(ui + "/") for r in page["resources"]), page["resources"]
    assert any(r.endswith("/static/plotly.min.js") for r in page["resources"])

    # Every chart is drawn, with its marks.
    assert all(page["drawn"].values()), page["drawn"]
    marks = page["marks"]
    assert marks["throughput"] >= 1 and marks["latency"] >= 1, marks
    assert marks["drift"] >= 1, "the drift heat map drew no cells"
    assert marks["outcomes"] == len(records.DEAD_LETTERS) + 1, marks
    assert marks["quality"] >= len(records.FEATURES) + 1, marks

    # The numbers written to the topics.
    assert numbers["n-predictions"] == [f"{N_LOGS:,}", str(N_LOGS)]
    decisions = sum(r["decision"] for r in logs)
    assert numbers["n-decisions"] == [f"{decisions:,}", str(decisions)]
    latencies = np.array([r["latency_ms"]["total"] for r in logs])
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        text, value = numbers[f"n-{name}"]
        expected = float(np.percentile(latencies, q))
        assert abs(float(value) - expected) < 1e-9 and text == f"{expected:.1f}", (name, text, value, expected)
    assert numbers["n-alerts"] == ["1", "1"]
    (alert,) = page["alerts"]
    assert alert[:6] == ["critical", "card__amount_sum_1h", "psi", "0.3500", "0.25", "v1"]
    assert json.loads(page["deployment"]) == records.deployment_records()[-1]
    versions = sorted({v for v, _, _ in rows.values()})
    assert [row[0] for row in page["online"]] == versions
    for version, n_rows, positives, precision, recall in page["online"]:
        mine = [(label, flagged) for v, label, flagged in rows.values() if v == version]
        tp = sum(1 for label, flagged in mine if label and flagged)
        assert (n_rows, positives) == (f"{len(mine):,}", str(sum(label for label, _ in mine)))
        assert precision == f"{100 * tp / sum(f for _, f in mine):.1f}%"
        assert recall == f"{100 * tp / sum(label for label, _ in mine):.1f}%"

    # The label join's gauges, per worker.
    assert page["online_workers"] == [[endpoints["workers"][0].url, "v1", "champion", "0.875", "0.500", "0.250", "40.0%", "yes"]]

    # The drift heat map holds the monitor's values, window by window; the quality chart its share.
    drift = page["drift"]
    assert drift["statistic"] == "psi" and drift["rows"] == sorted(records.FEATURES)
    assert drift["z"] == [records.PSI[f] for f in sorted(records.FEATURES)]
    assert ["profile__age_days missing_share", 0.1] in page["quality_monitor"]

    # The numbers the metrics endpoints answer.
    scraped = _scraped([e.url for e in endpoints["workers"]] + [endpoints["monitor"].url])
    for element, metric in (
        ("f-predictions", "sluice_predictions_total"), ("f-dlq", "sluice_dlq_total"), ("f-late", "sluice_late_total"),
        ("f-events-in", "sluice_events_in_total"),
    ):
        expected = scraped[metric]
        assert numbers[element] == [f"{expected:,.0f}", str(int(expected))], element
    assert numbers["f-ready"][1] == str(int(scraped["sluice_ready"]))
    # 200 observations, all in (2 ms, 5 ms]: histogram_quantile interpolates 2 + 3 * q ms.
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        text, value = numbers[f"f-{name}"]
        assert abs(float(value) - (2 + 3 * q)) < 1e-9 and text == f"{2 + 3 * q:.1f}", (name, text, value)
    # The counters stand still: the fleet rate is 0.
    assert numbers["f-rate"] == ["0.0", "0"]

    # New records appear without a reload.
    more = records.prediction_logs(N_MORE, seed=6, start=N_LOGS)
    _produce(bootstrap, [(topics["log"], r["transaction_id"].encode(), orjson.dumps(r), None) for r in more])
    later = _wait("the new records on the page", lambda: (
        (p := read_page(driver))["numbers"]["n-predictions"][1] == str(N_LOGS + N_MORE) and p
    ))
    assert later["renders"] > page["renders"]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "status_page.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
