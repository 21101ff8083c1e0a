"""The drift monitor's cost per event, and what naive settings would have alarmed on.

`monitor_cost` times, in this process, the two things the monitor does per
prediction-log record: parse it (orjson) and fold it into the windows
(`Monitor.process`: histogram slots, one bincount per sub-window and
batch, quality counters; evaluation included). `measure_drift` makes the
records the real way first: the workload's events through every stage of
the engine, with its model, as the worker computes them.

`naive_alarms` replays a prediction log through the monitor's core with
settings that look reasonable and are not, counting the alerts they would
open before a drift switch:

* hourly windows (12 sub-windows of 5 minutes) with the default
  thresholds and no noise floor: traffic with a daily cycle drifts with the
  clock;
* a chi-square test per feature and window at p < 0.05 without a
  correction (the histogram form of "KS test p < 0.05 per window"): with
  thousands of correlated events per window, any difference is
  "significant", and 19 features x 24 windows a day multiply the chances.
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import orjson

from stream.monitor.alerts import Check
from stream.monitor.monitor import Monitor
from stream.monitor.thresholds import BELOW, DEFAULT_RULES, Rule, Thresholds, Windows
from stream.monitor.window import VersionWindow

CHI2_RULE = Rule((("critical", 0.05),), BELOW)


def monitor_cost(raw_logs: list[bytes], describe, batch: int = 2000) -> dict:
    """CPU µs per record to parse and to fold into the windows (judging included), records/s of CPU, memory.

    CPU time (this process's), not wall time: on a shared machine the wall
    clock mostly measures the neighbours.
    """
    from stream.monitor.drift import noise_floor

    noise_floor("psi", 1, 1, 10, 0.01, 1)  # the quantile functions' import, paid once at start-up
    monitor = Monitor(Thresholds(), describe)
    parse_s = update_s = 0.0
    wall = time.perf_counter()
    for lo in range(0, len(raw_logs), batch):
        t0 = time.process_time()
        records = [orjson.loads(v) for v in raw_logs[lo : lo + batch]]
        t1 = time.process_time()
        monitor.judge(monitor.process(records, [0] * len(records), time.monotonic()), "bench")
        t2 = time.process_time()
        parse_s, update_s = parse_s + t1 - t0, update_s + t2 - t1
    wall = time.perf_counter() - wall
    n = max(len(raw_logs), 1)
    return {
        "records": len(raw_logs),
        "parse_cpu_us_per_record": round(parse_s / n * 1e6, 2),
        "update_cpu_us_per_record": round(update_s / n * 1e6, 2),
        "records_per_cpu_s": round(n / (parse_s + update_s), 1) if parse_s + update_s else None,
        "records_per_wall_s": round(n / wall, 1) if wall else None,
        "state_bytes": monitor.nbytes,
    }


def measure_drift(plan, model_dir, payloads: list[tuple[bytes, bytes, bytes]], partitions: int = 4) -> dict:
    """`monitor_cost` on the prediction log the engine writes for `payloads` ((key, value, id) of events)."""
    from stream.pipeline.engine import Engine
    from stream.pipeline.outcomes import Message
    from stream.serving.model import load_model
    from stream.kafka.topics import AppTopics
    from stream.settings import Settings

    model = load_model(model_dir, expected_features=plan.vector)
    # Event times may be anywhere relative to this machine's clock: none is "too far ahead" here.
    engine = Engine(
        plan, AppTopics.for_plan(Settings(app_id="bench"), plan), "bench", model=model, n_sources=partitions, max_event_ahead_ms=2**62,
    )
    queues = [[[] for _ in range(partitions)] for _ in engine.stages]
    now_ms = int(time.time() * 1000)
    for key, value, _ in payloads:
        queue = queues[0][zlib.crc32(key) % partitions]
        queue.append(Message(key, value, len(queue), now_ms))
    logs = []
    for stage in range(len(engine.stages)):
        state: dict = {}
        for partition, queue in enumerate(queues[stage]):
            for lo in range(0, len(queue), 1000):
                outcome = engine.process(stage, partition, queue[lo : lo + 1000], state)
                state.update(outcome.writes)
                for out in outcome.outputs:
                    if stage + 1 < len(engine.stages) and out.topic == engine.repartition_topics[stage + 1]:
                        nxt = queues[stage + 1][zlib.crc32(out.key) % partitions]
                        nxt.append(Message(out.key, out.value, len(nxt), 0))
                    elif out.topic == engine.topics["prediction_log"]:
                        logs.append(out.value)
    return monitor_cost(logs, _describe(model))


def _describe(model):
    return lambda version: (list(model.features), model.meta.get("reference"))


class Chi2Window(VersionWindow):
    """Judges each binned column with a chi-square test of the window's counts against the reference's."""

    def evaluate(self, last: int) -> list[Check]:
        from scipy.stats import chi2_contingency

        if self.first_bucket is None or self.first_bucket > last - self.span + 1:
            return []
        totals = self.counts.total(last, self.span)
        events = int(totals[self.layout.counters["events"]])
        if events < self.thresholds.windows.min_events:
            return []
        window = {"events": events, "time": "event", "end": last}
        out = []
        for j, binning in enumerate(self.layout.binnings):
            table = np.vstack([self.layout.counts(totals, j), binning.reference])
            table = table[:, table.sum(axis=0) > 0]
            p = float(chi2_contingency(table)[1]) if table.shape[1] > 1 else 1.0
            out.append(Check(self.baseline.version, binning.name, "chi2_p", p, None, window, None, _last_ms(self, last)))
        return out


def _last_ms(window: VersionWindow, last: int) -> str | None:
    inside = [s[1] for b, s in window.spans.items() if last - window.span < b <= last]
    return np.datetime_as_string(np.datetime64(max(inside), "ms"), unit="ms") + "Z" if inside else None


def naive_alarms(logs: list[dict], describe, switch_ms: int) -> dict:
    """Alerts opened before `switch_ms` (event time) by the default, hourly and chi-square settings.

    Only the records before the switch are replayed: what is counted is false alarms.
    """
    switch = np.datetime_as_string(np.datetime64(switch_ms, "ms"), unit="ms") + "Z"
    logs = [r for r in logs if r.get("event_time") and r["event_time"] < switch]
    hourly = Windows(sub_window_s=300, sub_windows=12, min_events=100, alpha=1.0, min_attribution_rows=10**9)
    chi2_rules = {**DEFAULT_RULES, "chi2_p": CHI2_RULE}
    settings = {
        "replayed_default": (Thresholds(windows=Windows(min_attribution_rows=10**9)), VersionWindow),
        "naive_hourly_windows_no_floor": (Thresholds(windows=hourly), VersionWindow),
        "naive_chi2_p05_per_window": (Thresholds(windows=Windows(min_attribution_rows=10**9), rules=chi2_rules), Chi2Window),
    }
    out = {}
    for name, (thresholds, window_class) in settings.items():
        monitor = Monitor(thresholds, describe)
        monitor.window_class = window_class
        checks = monitor.process(logs, [0] * len(logs), time.monotonic())
        if window_class is Chi2Window:
            checks = [c for c in checks if c.statistic == "chi2_p"]
        else:
            checks = [c for c in checks if c.window.get("time") == "event"]
        records = monitor.judge(checks, "replay")
        out[name] = sum(1 for r in records if r["kind"] == "alert" and _before(r, switch_ms))
    return out


def _before(record: dict, switch_ms: int) -> bool:
    last = record["last_event_time"]
    if last is None:
        return False
    return int(np.datetime64(last.rstrip("Z"), "ms").astype(np.int64)) < switch_ms
