// The status page: polls /api/status and redraws. Numbers carry their exact
// value in data-value (the text is rounded for reading); every chart is a
// plotly.js plot, redrawn in place with Plotly.react.
"use strict";

const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh")) || null;
const PLOT_CONFIG = { displayModeBar: false, responsive: true };
const BASE_LAYOUT = {
  margin: { l: 60, r: 20, t: 10, b: 40 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
  legend: { orientation: "h", y: -0.2 }, font: { size: 11 },
};
let renders = 0;
let driftStatistic = null;

function fmtInt(v) { return v == null ? "–" : Math.round(v).toLocaleString("en-US"); }
function fmtMs(v) { return v == null ? "–" : v.toFixed(1); }
function fmtShare(v) { return v == null ? "–" : (100 * v).toFixed(1) + "%"; }

function setNumber(id, value, format) {
  const el = document.getElementById(id);
  el.textContent = format(value);
  el.dataset.value = value == null ? "" : String(value);
}

function sum(values) { return values.reduce((a, b) => a + b, 0); }

function plot(id, traces, layout) {
  const empty = traces.every((t) => !(t.x || t.z || []).length);
  const annotations = empty ? [{ text: "no data yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] : [];
  return Plotly.react(id, traces, { ...BASE_LAYOUT, annotations, ...layout }, PLOT_CONFIG).then((el) => {
    el.dataset.renders = String(Number(el.dataset.renders || 0) + 1);
  });
}

function numbers(s) {
  const p = s.predictions, out = s.outcomes, fleet = s.fleet;
  setNumber("n-predictions", p.total, fmtInt);
  setNumber("n-decisions", p.decisions, fmtInt);
  for (const q of ["p50", "p95", "p99"]) setNumber("n-" + q, p.latency_ms[q], fmtMs);
  setNumber("n-dlq", out.dlq_total, fmtInt);
  setNumber("n-late", out.late_total, fmtInt);
  setNumber("n-alerts", s.monitoring.alerts.length, fmtInt);
  setNumber("f-up", fleet.up, fmtInt);
  setNumber("f-ready", fleet.ready, fmtInt);
  setNumber("f-events-in", fleet.totals.events_in, fmtInt);
  setNumber("f-predictions", fleet.totals.predictions, fmtInt);
  setNumber("f-dlq", fleet.totals.dlq, fmtInt);
  setNumber("f-late", fleet.totals.late, fmtInt);
  const rates = fleet.rate.predictions_per_s;
  setNumber("f-rate", rates.length ? rates[rates.length - 1] : null, (v) => (v == null ? "–" : v.toFixed(1)));
  setNumber("f-p50", fleet.latency_s.p50 == null ? null : 1000 * fleet.latency_s.p50, fmtMs);
  setNumber("f-p99", fleet.latency_s.p99 == null ? null : 1000 * fleet.latency_s.p99, fmtMs);
  document.getElementById("since").textContent =
    "(since " + new Date(s.feed.since_ms).toISOString().replace(".000", "") + ")";
  document.getElementById("fleet-urls").textContent = fleet.urls.length ? "(" + fleet.urls.join(", ") + ")" : "(no --metrics-url given)";
}

function charts(s) {
  const p = s.predictions, out = s.outcomes, q = s.quality;
  const time = { type: "date" };
  const drawn = [];
  drawn.push(plot("chart-throughput", [
    { name: "prediction log records/s", type: "bar", x: p.throughput.t, y: p.throughput.n, marker: { color: "#8fb3de" } },
    { name: "fleet predictions/s (metrics)", type: "scatter", mode: "lines", x: s.fleet.rate.t, y: s.fleet.rate.predictions_per_s,
      line: { color: "#1f4e8c" } },
  ], { xaxis: time, yaxis: { title: "per second", rangemode: "tozero" } }));
  drawn.push(plot("chart-latency", ["p50", "p95", "p99"].map((name) => (
    { name, type: "scatter", mode: "lines+markers", x: p.latency_series.t, y: p.latency_series[name] }
  )), { xaxis: time, yaxis: { title: "ms", rangemode: "tozero" } }));
  const dlq = Object.entries(out.dlq).sort((a, b) => b[1] - a[1]);
  const late = Object.entries(out.late).sort((a, b) => b[1] - a[1]);
  drawn.push(plot("chart-outcomes", [
    { name: "dead letters", type: "bar", orientation: "h", y: dlq.map((e) => e[0]), x: dlq.map((e) => e[1]), marker: { color: "#c0392b" } },
    { name: "late", type: "bar", orientation: "h", y: late.map((e) => "late: " + e[0]), x: late.map((e) => e[1]), marker: { color: "#e67e22" } },
  ], { margin: { ...BASE_LAYOUT.margin, l: 220 }, yaxis: { automargin: true } }));
  drawn.push(drift(s.monitoring.heatmaps));
  const shares = Object.entries(q.null_share).sort((a, b) => b[1] - a[1]);
  const other = [["fallback", q.fallback_share], ["rule decided", q.rule_share], ["batch feature missing", q.batch_missing_share]];
  // One bar per (feature, statistic, version): plotly stacks the bars of one trace that share a category,
  // so two versions' shares under one label would add up (0.75 + 1.0 drawn as 175%).
  const monitor = s.monitoring.quality.filter((g) => g.value > 0);
  // Horizontal bars: a model has tens of features, and their names are long.
  const bars = (name, entries, color) => ({
    name, type: "bar", orientation: "h", y: entries.map((e) => e[0]), x: entries.map((e) => e[1] || 0), marker: { color },
  });
  drawn.push(plot("chart-quality", [
    bars("feature is null (log)", shares, "#7d5ba6"),
    bars("per prediction (log)", other, "#16a085"),
    bars("monitor, last window", monitor.map((g) => [g.feature + " " + g.statistic + " (" + g.model_version + ")", g.value]), "#d35400"),
  ], { xaxis: { tickformat: ".0%", rangemode: "tozero" }, yaxis: { automargin: true, autorange: "reversed" } }));
  const versions = Object.entries(p.by_version), routes = Object.entries(p.by_route);
  drawn.push(plot("chart-versions", [
    { name: "by version (log)", type: "bar", x: versions.map((e) => e[0]), y: versions.map((e) => e[1]) },
    { name: "by route (log)", type: "bar", x: routes.map((e) => "route " + e[0]), y: routes.map((e) => e[1]) },
    { name: "by version (metrics)", type: "bar", x: Object.keys(s.fleet.by_version), y: Object.values(s.fleet.by_version) },
  ], { barmode: "group", xaxis: { automargin: true } }));
  return Promise.all(drawn);
}

function drift(heatmaps) {
  const select = document.getElementById("drift-statistic");
  const names = Object.keys(heatmaps).sort();
  if (select.options.length !== names.length) {
    select.replaceChildren(...names.map((n) => new Option(n, n)));
  }
  if (!names.includes(driftStatistic)) driftStatistic = names.find((n) => /psi|drift/i.test(n)) || names[0] || null;
  select.value = driftStatistic || "";
  const map = heatmaps[driftStatistic] || { features: [], windows: [], z: [] };
  return plot("chart-drift", [{
    type: "heatmap", x: map.windows, y: map.features, z: map.z, colorscale: "YlOrRd", reversescale: true, zmin: 0,
    hovertemplate: "%{y}<br>window %{x} (event time, UTC)<br>%{z:.4f}<extra></extra>", colorbar: { title: { text: driftStatistic || "" } },
  }], { margin: { ...BASE_LAYOUT.margin, l: 160 }, xaxis: { type: "category", automargin: true }, yaxis: { automargin: true } });
}

function rows(id, items, cells) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...items.map((item) => {
    const tr = document.createElement("tr");
    for (const value of cells(item)) {
      const td = document.createElement("td");
      td.textContent = value == null ? "–" : String(value);
      tr.appendChild(td);
    }
    return tr;
  }));
}

function tables(s) {
  rows("table-alerts", s.monitoring.alerts, (a) => [
    a.severity, a.feature, a.statistic, typeof a.value === "number" ? a.value.toFixed(4) : a.value, a.threshold, a.model_version,
    a.window_label || (a.window && typeof a.window === "object" ? a.window.start + " – " + a.window.end : a.window),
    a.opened ? a.opened.emitted_at : a.emitted_at,
  ]);
  rows("table-online", Object.entries(s.online), ([v, m]) => [v, fmtInt(m.rows), fmtInt(m.positives), fmtShare(m.precision), fmtShare(m.recall)]);
  const fixed = (v) => (v == null || Number.isNaN(v) ? "–" : v.toFixed(3));
  rows("table-online-workers", s.fleet.online, (o) => [
    o.url, o.version, o.route, fixed(o.metrics.auc), fixed(o.metrics.precision), fixed(o.metrics.recall),
    fmtShare(o.metrics.label_coverage_ratio), windowState(o.metrics.window_provisional),
  ]);
  experiments(s.experiments);
  document.getElementById("deployment").textContent =
    s.monitoring.deployment == null ? "no deployments record yet" : JSON.stringify(s.monitoring.deployment, null, 2);
  rows("table-workers", s.fleet.targets, (w) => [
    w.url, w.kind, w.up ? "yes" : "no", w.kind === "worker" ? (w.ready ? "yes" : "no") : "–", w.error,
  ]);
  // Behind a toggle, closed by default: tens of series would make the page thousands of pixels tall.
  setNumber("n-gauges", s.fleet.gauges_total, fmtInt);
  document.getElementById("gauges-cut").textContent =
    s.fleet.gauges.length < s.fleet.gauges_total ? ", the first " + s.fleet.gauges.length + " shown" : "";
  rows("table-gauges", s.fleet.gauges, (g) => [
    g.name + (Object.keys(g.labels).length ? JSON.stringify(g.labels) : ""), g.url, Number(g.value.toPrecision(6)),
  ]);
}

// Four significant digits: the report's own numbers, rounded, never recomputed here.
function sig(v) { return v == null ? "–" : String(Number(v.toPrecision(4))); }

function experiments(report) {
  rows("table-experiments", report ? report.experiments : [], (e) => {
    const r = e.sample_ratio;
    return [
      e.challenger + " vs " + e.champion, e.kind, fmtInt(e.n), sig(e.effect), "[" + sig(e.interval[0]) + ", " + sig(e.interval[1]) + "]",
      sig(e.p_value), e.decision,
      r ? "A " + fmtInt(r.a) + " / B " + fmtInt(r.b) + ", p " + sig(r.p_value) + (r.mismatch ? " MISMATCH" : "") : "–",
    ];
  });
}

// The label join's gauge: 1 until the label clock has passed the window's end plus the label window
// (stream.lifecycle.online_eval.window_final, the same rule `sluice models show` prints).
function windowState(provisional) { return provisional == null ? null : provisional ? "provisional" : "final"; }

function problems(s) {
  const found = [];
  if (s.feed.error) found.push(s.feed.error);
  const down = s.fleet.targets.filter((w) => !w.up).length;
  if (down) found.push(down + " metrics endpoint(s) not answering");
  if (s.monitoring.drift_unplaced) {
    found.push(s.monitoring.drift_unplaced + " drift values without their window's bounds (a sluice monitor without "
      + "sluice_monitor_window_seconds): not in the heat map");
  }
  const unreadable = sum(Object.values(s.unreadable));
  if (unreadable) found.push(unreadable + " records the page could not read");
  return found;
}

function show(message) {
  const el = document.getElementById("problem");
  el.hidden = !message;
  el.textContent = message || "";
}

async function update() {
  let refresh = REFRESH_MS || 2000;
  try {
    const reply = await fetch("/api/status", { cache: "no-store" });
    if (!reply.ok) throw new Error("status " + reply.status);
    const s = await reply.json();
    refresh = REFRESH_MS || s.refresh_ms;
    numbers(s);
    tables(s);
    await charts(s);
    renders += 1;
    document.body.dataset.renders = String(renders);
    document.body.dataset.statusAt = String(s.now_ms);
    document.getElementById("updated").textContent = "updated " + new Date(s.now_ms).toLocaleTimeString();
    show(problems(s).join("; "));
  } catch (err) {
    show("cannot update: " + err.message);
  }
  setTimeout(update, refresh);
}

document.getElementById("drift-statistic").addEventListener("change", (e) => { driftStatistic = e.target.value; });
update();
