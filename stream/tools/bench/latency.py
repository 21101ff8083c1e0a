"""Latency measurements of `sluice bench`: the broker's own hop, and paced rate runs through a system."""

from __future__ import annotations

import time
import uuid

import numpy as np

from stream.kafka.clients import ensure_topics, warmed_producer
from stream.kafka.reader import TopicReader

#: grows that fast means capacity below ~83% of the offered rate). Smaller
#: trends are indistinguishable from fetch-wait jitter, which on the embedded
#: broker alone spans about a second.
SATURATED_GROWTH_MS = 1500.0
SATURATED_SHARE = 0.2


def broker_hop_latency(bootstrap: str, rate: int, seconds: float) -> dict:
    """What the broker alone adds per hop: produce -> consume latency, no worker in between.

    Every system here crosses the broker at least twice (events in, outputs
    out; Sluice's two stages cross it three times), so this floor is part of
    every latency figure. Consumer fetch wait 10 ms, producer linger 0.
    """
    topic = f"bench-{run_id()}-hop"
    ensure_topics(bootstrap, [topic], 1)
    producer = warmed_producer(bootstrap, topic, **{"linger.ms": 0})  # the warm-up record is offset 0
    reader = TopicReader(
        bootstrap, topic, partitions=1, keep=lambda m: (m.offset(), time.time() * 1000 - m.timestamp()[1]),
        poll_s=0.05, one_at_a_time=True, fetch_wait_ms=10,
    )
    reader.start()
    n = int(rate * seconds)
    started = time.perf_counter()
    for i in range(n):
        ahead = started + i / rate - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)
        producer.produce(topic, b"x" * 200)
        producer.poll(0)
    producer.flush(30)
    reader.wait_for(n + 1, idle_s=10, limit_s=10)
    reader.stop()
    latencies = [ms for offset, ms in reader.records if offset > 0]
    if not latencies:
        return {"rate": rate, "messages": n, "received": 0}
    p50, p99, p999 = np.percentile(latencies, [50, 99, 99.9])
    return {"rate": rate, "messages": n, "received": len(latencies),
            "p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1), "p999_ms": round(float(p999), 1)}


def rate_run(producer, topic: str, reader: TopicReader, events: list, rate: int) -> dict:
    """Produce `events` at `rate`/s, wait for their outputs, report latency per event id."""
    mark = len(reader.records)
    sent_at: dict[bytes, int] = {}
    started = time.perf_counter()
    for i, (key, value, event_id) in enumerate(events):
        ahead = started + i / rate - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)
        stamp = int(time.time() * 1000)
        producer.produce(topic, value, key, timestamp=stamp)
        sent_at[event_id] = stamp
        if i % 256 == 0:
            producer.poll(0)
    producer.flush(30)
    send_s = time.perf_counter() - started
    # A system that keeps up finishes within moments; one that does not is
    # given a bounded grace period, then called saturated.
    grace = max(3.0, 0.5 * len(events) / rate)
    reader.wait_for(mark + len(events), idle_s=grace, limit_s=grace)
    outputs = [(sent_at[k], ts) for k, ts in reader.records[mark:] if k in sent_at]
    return phase_stats(rate, len(events), send_s, outputs)


def phase_stats(rate: int, n: int, send_s: float, outputs: list[tuple[int, int]]) -> dict:
    """Latency percentiles of one rate run, and whether the system kept up.

    A system that keeps up has the same latency at the end of a run as at
    its start; one that does not builds a queue, and its latency grows by
    (rate / capacity - 1) ms per ms of run. The trend of latency over send
    time says which, and stays meaningful when latency itself is high: on
    brokers that hold fetches for the consumer's whole fetch wait, a system
    that keeps up can sit near a second.
    """
    if not outputs:
        return {"rate": rate, "events": n, "outputs": 0, "saturated": True, "output_events_per_s": 0.0,
                "input_events_per_s": round(n / send_s, 1)}
    sent = np.array([s for s, _ in outputs], dtype=np.int64)
    done = np.array([d for _, d in outputs], dtype=np.int64)
    latency = (done - sent).astype(np.float64)
    span_ms = float(np.ptp(sent))
    slope = float(np.polyfit((sent - sent.min()).astype(np.float64), latency, 1)[0]) if span_ms > 0 else 0.0
    growth_ms = slope * span_ms  # fitted latency at the run's end minus at its start
    return {
        "rate": rate,
        "events": n,
        "outputs": len(outputs),
        "input_events_per_s": round(n / send_s, 1),
        "output_events_per_s": round(len(outputs) / (max(int(done.max() - done.min()), 1) / 1000), 1),
        "p50_ms": round(float(np.percentile(latency, 50)), 2),
        "p99_ms": round(float(np.percentile(latency, 99)), 2),
        "p999_ms": round(float(np.percentile(latency, 99.9)), 2),
        "max_ms": round(float(latency.max()), 2),
        "latency_growth_ms": round(growth_ms, 1),
        "saturated": len(outputs) < n or growth_ms > max(SATURATED_GROWTH_MS, SATURATED_SHARE * span_ms),
    }


def phase_text(phase: dict) -> str:
    if not phase.get("outputs"):
        return "no outputs: saturated"
    state = "SATURATED" if phase["saturated"] else "sustained"
    text = f"{state}: p50 {phase['p50_ms']:.1f} ms, p99 {phase['p99_ms']:.1f} ms, out {phase['output_events_per_s']:,.0f}/s"
    if "broker_cpu_cores" in phase:
        text += f"; CPU cores: system {phase.get('system_cpu_cores', 0):.2f}, broker {phase['broker_cpu_cores']:.2f}"
    return text


def run_id() -> str:
    return f"{int(time.time()) % 10**6}{uuid.uuid4().hex[:4]}"
