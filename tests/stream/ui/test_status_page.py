"""`sluice ui` in a real browser: headless Chromium (Debian's chromium and chromium-driver) through Selenium.

Real-shaped records go to real topics on the session broker, two
worker-like processes and a monitor-like one serve `/metrics` with Sluice's
own collectors, and `sluice ui` runs as a subprocess (fixtures in
conftest.py). The page must load with nothing from
outside its own server, draw every chart, show the numbers that were
written and the ones the metrics endpoints answer, and follow new records by
itself. Every number read off the page is compared with the topic or metric
it comes from, recomputed here; every share is within [0, 1] as drawn (plotly
stacks the bars of one trace that share a label); drift windows are labeled
by their event-time bounds; the page's blocks do not overlap; the raw gauges
stay behind a toggle until it is opened. A screenshot is kept in
tests/artifacts/ (SLUICE_TEST_ARTIFACTS elsewhere).
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
  // Every drawn bar of the quality chart: its category and where it ends on the share axis (plotly's own stacking).
  quality_bars: (document.getElementById("chart-quality").calcdata || []).flatMap((cd) => cd
    .map((bar, i) => [String(cd[0].trace.y[bar.i ?? i]), bar.s1]).filter((bar) => Number.isFinite(bar[1]))),
  quality_axis: (() => { const el = document.getElementById("chart-quality"); return el._fullLayout.xaxis.range; })(),
  targets: table("table-workers"),
  gauges: {
    open: document.getElementById("raw-gauges").open, count: document.getElementById("n-gauges").dataset.value,
    rows: table("table-gauges"), shown: document.getElementById("table-gauges").checkVisibility(),
    height: document.getElementById("raw-gauges").getBoundingClientRect().height,
  },
  page_height: document.documentElement.scrollHeight,
  problem: document.getElementById("problem").hidden ? null : document.getElementById("problem").textContent,
  // The charts' own numbers: records per second, and predictions per version and route.
  throughput: ((document.getElementById("chart-throughput").data || [])[0] || {}).y || [],
  versions: (document.getElementById("chart-versions").data || []).map((t) => [t.name, t.x, t.y]),
  // The page's blocks, and every table with the block it stands in.
  blocks: q("header, section.cards, .charts > figure, .tables > .block").map((el) => {
    const r = el.getBoundingClientRect();
    return [el.id || el.querySelector("h2, figcaption")?.textContent || el.tagName, r.left, r.top, r.right, r.bottom];
  }),
  tables: q(".tables table, .tables pre").filter((el) => el.checkVisibility()).map((el) => {
    const r = el.getBoundingClientRect(), b = el.closest(".block").getBoundingClientRect();
    return [el.id, [r.left, r.top, r.right, r.bottom], [b.left, b.top, b.right, b.bottom]];
  }),
  drift: (() => {
    const trace = (document.getElementById("chart-drift").data || [])[0] || {};
    return { statistic: document.getElementById("drift-statistic").value, rows: trace.y, z: trace.z,
             columns: (trace.x || []).length, x: trace.x,
             ticks: Array.from(document.querySelectorAll("#chart-drift .xtick text")).map((t) => t.textContent) };
  })(),
  quality_monitor: (() => {
    const trace = (document.getElementById("chart-quality").data || [])[2] || {};
    return (trace.y || []).map((y, i) => [y, trace.x[i]]);
  })(),
};
"""


def read_page(driver) -> dict:
    return driver.execute_script(READ_PAGE, list(CHARTS))


def _samples(urls: list[str]):
    """(url, family type, sample) of every endpoint, read here with prometheus_client's parser (not the page's)."""
    from prometheus_client.parser import text_string_to_metric_families

    for url in urls:
        with urllib.request.urlopen(url, timeout=5) as reply:
            for family in text_string_to_metric_families(reply.read().decode()):
                for sample in family.samples:
                    yield url, family.type, sample


def _scraped(urls: list[str]) -> dict[str, float]:
    """Sums over the endpoints (events in: stage 0 only)."""
    sums: Counter = Counter()
    for _, _, s in _samples(urls):
        if not (s.name == "sluice_events_in_total" and s.labels.get("stage") != "0"):
            sums[s.name] += s.value
    return sums


def _predictions_by_version(urls: list[str]) -> dict[str, float]:
    out: Counter = Counter()
    for _, _, s in _samples(urls):
        if s.name == "sluice_predictions_total":
            out[s.labels["model_version"]] += s.value
    return dict(out)


def _gauge_series(urls: list[str]) -> list[tuple[str, str, float]]:
    """(name with labels, url, value) of every gauge the page lists as raw: Sluice's own, not readiness or online metrics."""
    out = []
    for url, kind, s in _samples(urls):
        if kind != "gauge" or not s.name.startswith("sluice_") or s.name in ("sluice_ready",) or s.name.endswith("_created"):
            continue
        if s.name.startswith("sluice_online_") and "version" in s.labels:
            continue
        out.append((s.name + (json.dumps(s.labels, separators=(",", ":")) if s.labels else ""), url, s.value))
    return sorted(out)


def _check_layout(page: dict) -> None:
    """The page's blocks do not intersect, and every drawn table stays inside its block."""
    blocks = page["blocks"]
    overlaps = [(a[0], b[0]) for i, a in enumerate(blocks) for b in blocks[i + 1:] if _intersect(a[1:], b[1:])]
    assert not overlaps, overlaps
    for name, rect, block in page["tables"]:
        if rect[2] > rect[0] and rect[3] > rect[1]:
            assert block[0] - 0.5 <= rect[0] and rect[2] <= block[2] + 0.5, (name, rect, block)


def _window_text(window: dict) -> str:
    """How the page names a window of these records (same day, whole seconds): '2026-11-01 03:00:00 – 04:00:00'."""
    assert window["start"][:10] == window["end"][:10] and window["start"].endswith(".000Z")
    return f"{window['start'][:10]} {window['start'][11:19]} – {window['end'][11:19]}"


def _intersect(a, b) -> bool:
    """Whether two rectangles (left, top, right, bottom) share any area."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


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
    return {"logs": logs, "rows": rows, "labeled": [orjson.loads(value) for _, value in labeled]}


def _drift_windows(ui: str, monitor) -> None:
    """The monitor judges four windows, one after the other; the heat map gains a column for each."""
    monitor.send(records.lag_gauges())
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
    # Two workers: the monitor's endpoint serves sluice_ready and the worker counters too, and is no worker.
    everything = {
        "predictions": N_LOGS, "dlq": 7, "late": records.LATE, "up": 2, "online": ["v1", "v2"], "deployment": True,
        "alerts": 1, "rates": True, "drift": 4,
    }
    at = _wait(
        "the server to read every record and endpoint",
        lambda: (s := _api(ui)) and {**_counts(s), "rates": _counts(s)["rates"] > 0} == everything and s["now_ms"],
        show=lambda: _counts(_api(ui)),
    )
    page = _wait("a render of a later status", lambda: (p := read_page(driver))["status_at"] > at and p)
    numbers = page["numbers"]

    # Every endpoint answers, every record is readable, every drift value has its window.
    assert page["problem"] is None, page["problem"]

    # Nothing came from outside the page's own server.
    assert page["resources"] and all(r.startswith(ui + "/") for r in page["resources"]), page["resources"]
    assert any(r.endswith("/static/plotly.min.js") for r in page["resources"])

    # The charts count what the log holds: every record once per second it came in, per version and route.
    assert sum(page["throughput"]) == N_LOGS
    charted = {name: dict(zip(x, y)) for name, x, y in page["versions"]}
    assert charted["by version (log)"] == dict(Counter(r["model_version"] for r in logs))
    assert charted["by route (log)"] == {f"route {k}": n for k, n in Counter(r["route"] for r in logs).items()}

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
    (opened,) = [r for r in records.alert_records() if r["kind"] == "alert" and r["feature"] == "card__amount_sum_1h"]
    assert alert[:7] == ["critical", "card__amount_sum_1h", "psi", "0.3500", "0.25", "v1", _window_text(opened["window"])]
    assert json.loads(page["deployment"]) == records.deployment_records()[-1]

    # Labeled rows per version: the rows of the labeled topic (stream.lifecycle.labeled.rows) that have a label,
    # the window's default and the one labeled only through a correction of it included.
    from stream.lifecycle.labeled import rows as labeled_rows

    final = [r for r in labeled_rows(written["labeled"], records.SCHEMA.event_id).values() if r["label"] is not None]
    assert len(final) == sum(label is not None for _, label, _ in rows.values())
    assert [row[0] for row in page["online"]] == sorted({r["model_version"] for r in final})
    for version, n_rows, positives, precision, recall in page["online"]:
        mine = [(r["label"] >= 0.5, r["score"] >= r["threshold"]) for r in final if r["model_version"] == version]
        tp = sum(1 for label, flagged in mine if label and flagged)
        assert (n_rows, positives) == (f"{len(mine):,}", str(sum(label for label, _ in mine)))
        assert precision == f"{100 * tp / sum(f for _, f in mine):.1f}%"
        assert recall == f"{100 * tp / sum(label for label, _ in mine):.1f}%"

    # The label join's gauges, per worker; its window is provisional (the gauge says 1).
    assert page["online_workers"] == [
        [endpoints["workers"][0].url, "v1", "champion", "0.875", "0.500", "0.250", "40.0%", "provisional"],
    ]

    # The drift heat map holds the monitor's values, window by window, each column labeled by the window's
    # event-time bounds (the monitor's gauges, as in its alert records), never by when it was scraped.
    drift = page["drift"]
    assert drift["statistic"] == "psi" and drift["rows"] == sorted(records.FEATURES)
    assert drift["z"] == [records.PSI[f] for f in sorted(records.FEATURES)]
    labels = [_window_text(records._window(w)) for w in range(4)]
    assert drift["x"] == labels and drift["ticks"] == labels
    # The open alert's window is a column of the heat map, with the alert's value in it.
    column = labels.index(alert[6])
    assert drift["z"][sorted(records.FEATURES).index("card__amount_sum_1h")][column] == opened["value"]

    # Data quality: one bar per (feature, statistic, version), each ending at its own share, all within [0, 1].
    bars = page["quality_bars"]
    assert bars and all(0 <= end <= 1 for _, end in bars), bars
    assert len(bars) == len({category for category, _ in bars}), f"two bars share a category, plotly stacks them: {bars}"
    assert sorted(page["quality_monitor"]) == sorted(
        [f"profile__age_days missing_share ({v})", share] for v, share in records.MISSING_SHARE.items()
    )
    for category, share in page["quality_monitor"]:
        assert [end for c, end in bars if c == category] == [share]
    quality = _api(ui)["quality"]
    drawn = dict(bars)
    for name, share in quality["null_share"].items():
        assert drawn[name] == pytest.approx(share, abs=1e-12) and share == sum(
            r["features"][name] is None for r in logs) / N_LOGS
    assert drawn["fallback"] == pytest.approx(sum(r["fallback"] is not None for r in logs) / N_LOGS, abs=1e-12)

    # Nothing overlaps, on a wide screen and on a narrower one (where the tables' columns are narrowest).
    _check_layout(page)
    width = driver.get_window_size()["width"]
    driver.set_window_size(1100, 2400)
    narrow = _wait("a render at 1100 px", lambda: (p := read_page(driver))["renders"] > page["renders"] + 1 and p)
    _check_layout(narrow)
    driver.set_window_size(width, 2400)

    # Raw gauges: all of them, closed by default (the page stays short), each value the endpoint's own.
    urls = [e.url for e in endpoints["workers"]] + [endpoints["monitor"].url]
    series = _gauge_series(urls)
    assert len(series) > 50
    gauges = page["gauges"]
    assert gauges["open"] is False and gauges["shown"] is False and gauges["count"] == str(len(series))
    assert gauges["height"] < 40, gauges["height"]  # the toggle's one line
    assert page["page_height"] < 3000, page["page_height"]
    assert sorted((name, url, float(value)) for name, url, value in gauges["rows"]) == [
        (name, url, float(f"{value:.6g}")) for name, url, value in series
    ]
    driver.find_element("css selector", "#raw-gauges summary").click()
    opened_page = _wait("the raw gauges shown", lambda: (p := read_page(driver))["gauges"]["shown"] and p)
    assert opened_page["gauges"]["open"] is True and opened_page["gauges"]["height"] > 40 * len(series) / 2
    assert opened_page["page_height"] > page["page_height"]
    driver.find_element("css selector", "#raw-gauges summary").click()

    # The numbers the metrics endpoints answer: the workers' (the monitor's endpoint is no worker).
    scraped = _scraped([e.url for e in endpoints["workers"]])
    for element, metric in (
        ("f-predictions", "sluice_predictions_total"), ("f-dlq", "sluice_dlq_total"), ("f-late", "sluice_late_total"),
        ("f-events-in", "sluice_events_in_total"),
    ):
        expected = scraped[metric]
        assert numbers[element] == [f"{expected:,.0f}", str(int(expected))], element
    assert numbers["f-up"] == [str(len(endpoints["workers"])), str(len(endpoints["workers"]))]
    assert charted["by version (metrics)"] == _predictions_by_version([e.url for e in endpoints["workers"]])
    assert numbers["f-ready"][1] == str(int(scraped["sluice_ready"]))
    kinds = {row[0]: row[1] for row in page["targets"]}
    assert kinds == {**{e.url: "worker" for e in endpoints["workers"]}, endpoints["monitor"].url: "other"}
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
