"""What a fetch costs the embedded broker as a partition fills: `python -m tests.stream.kafka.fetch_cost_figures`.

A figures tool, not a test. Tansu's memory storage keeps each produced
batch as one object and, to serve a fetch, lists every object of the
partition; so its cost should follow the number of stored batches, not of
records. Two experiments, each on a fresh embedded broker with one
one-partition topic:

* `fill` (the default): probe, then append `--step-records` records of
  `--record-bytes` in batches of `--records-per-batch`, and probe again,
  `--steps` times. A probe produces at `--probe-rate` for `--probe-s`, one
  record a batch, and reads from the partition's end, once per fetch wait
  of `--waits`; it prints the hop (produce -> received) p50 / p99, how many
  probe records arrived at all, and the cores the broker kept busy. Run it
  once per batch size (`--records-per-batch 1,20`, with `--step-records`
  scaled by 20 for the second) to hold as many batches with 20 times the
  records.
* `wait`: the hop at a steady rate for each fetch wait of `--waits`, on an
  empty partition: how long the broker holds a fetch with nothing to return.

docs/performance.md ("Where the 1,000/s latency went") quotes its output.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import psutil
from confluent_kafka import TopicPartition

from stream.kafka.broker import EmbeddedBroker
from stream.kafka.clients import ensure_topics, make_consumer, make_producer, warmed_producer
from stream.tools.bench.systems import cpu_of

TOPIC = "fetch-cost"


class EndReader(threading.Thread):
    """Reads the partition from its current end; `hops_ms` holds received-minus-produced for each record."""

    def __init__(self, bootstrap: str, start_offset: int, fetch_wait_ms: int):
        super().__init__(daemon=True)
        self.consumer = make_consumer(
            bootstrap, **{"group.id": f"fetch-cost-{time.monotonic_ns()}", "enable.auto.commit": False,
                          "fetch.wait.max.ms": fetch_wait_ms},
        )
        self.consumer.assign([TopicPartition(TOPIC, 0, start_offset)])
        self.hops_ms: list[float] = []
        self.received_ms: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                msg = self.consumer.poll(0.05)
                # Only probe records count: a broker can report an end offset short of the fill's end.
                if msg is not None and not msg.error() and msg.value()[:1] == b"p":
                    now_ms = time.time() * 1000
                    self.hops_ms.append(now_ms - msg.timestamp()[1])
                    self.received_ms.append(now_ms)
        finally:
            self.consumer.close()


def probe(bootstrap: str, broker: psutil.Process, end: int, rate: int, seconds: float, fetch_wait_ms: int) -> dict:
    """Produce at `rate` from offset `end` on and read it back: hop percentiles and the broker's cores."""
    reader = EndReader(bootstrap, end, fetch_wait_ms)
    reader.start()
    time.sleep(1.0)  # the reader has joined the partition's end before the first probe record
    # One record a batch, as a worker's small outputs mostly are, and so that the batches can be counted.
    producer = warmed_producer(bootstrap, f"{TOPIC}-warmup", **{"linger.ms": 0, "batch.num.messages": 1})
    n = int(rate * seconds)
    cpu0, wall0 = cpu_of(broker), time.monotonic()
    started = time.perf_counter()
    for i in range(n):
        ahead = started + i / rate - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)
        producer.produce(TOPIC, b"p" * 600, partition=0)
        producer.poll(0)
    producer.flush(30)
    deadline = time.monotonic() + 5
    while len(reader.hops_ms) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    cores = (cpu_of(broker) - cpu0) / (time.monotonic() - wall0)
    reader.halt.set()
    reader.join(10)
    hops = np.array(reader.hops_ms)
    out = {"received": len(hops), "sent": n, "broker_cores": round(cores, 2)}
    if len(hops):
        out.update(p50_ms=round(float(np.percentile(hops, 50)), 1), p99_ms=round(float(np.percentile(hops, 99)), 1))
    # Records of one fetch answer arrive within a millisecond of each other; a longer gap starts the next answer.
    arrived = np.array(reader.received_ms)
    if len(arrived) > 2:
        starts = arrived[np.r_[True, np.diff(arrived) > 1.0]]
        out["answers"] = len(starts)
        if len(starts) > 1:
            out["answer_every_ms"] = round(float(np.median(np.diff(starts))), 1)
    return out


def fill(bootstrap: str, records: int, per_batch: int, record_bytes: int) -> float:
    """Append `records` of `record_bytes` in batches of exactly `per_batch`; returns the seconds it took."""
    # batch.num.messages caps a batch; flushing after each `per_batch` records
    # keeps a batch from holding fewer (with one record a batch, the cap alone does).
    producer = make_producer(
        bootstrap, **{"linger.ms": 0 if per_batch == 1 else 1000, "batch.num.messages": per_batch,
                      "batch.size": max(per_batch * (record_bytes + 100), 16384),
                      "message.max.bytes": max(per_batch * (record_bytes + 100), 1_000_000)},
    )
    started = time.monotonic()
    value = b"f" * record_bytes
    for i in range(records):
        while True:
            try:
                producer.produce(TOPIC, value, partition=0)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
        if per_batch > 1 and (i + 1) % per_batch == 0 and producer.flush(30):
            msg = "a fill batch was not delivered within 30 s"
            raise RuntimeError(msg)
    if producer.flush(120):
        msg = "the fill was not delivered within 120 s"
        raise RuntimeError(msg)
    return time.monotonic() - started


def end_offset(bootstrap: str) -> int:
    consumer = make_consumer(bootstrap, **{"group.id": "fetch-cost-watermarks"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10)[1]
    finally:
        consumer.close()


def fill_run(args, per_batch: int, step_records: int) -> list[dict]:
    """Probe, fill, probe again: the partition's records and batches counted as they are written."""
    rows = []
    held = {"records": 0, "batches": 0}
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap_servers, [TOPIC], 1)
        proc = psutil.Process(broker.pid)
        for step in range(args.steps + 1):
            took = 0.0
            if step:
                took = fill(broker.bootstrap_servers, step_records, per_batch, args.record_bytes)
                held["records"] += step_records
                held["batches"] += -(-step_records // per_batch)
            for wait_ms in args.waits:
                row = {"records_per_batch": per_batch, "held_records": held["records"], "held_batches": held["batches"],
                       "fill_s": round(took, 1), "fetch_wait_ms": wait_ms}
                # The count, not the broker's end offset: Tansu reports a multi-record batch's base offset + 1.
                row.update(probe(broker.bootstrap_servers, proc, held["records"], args.probe_rate, args.probe_s, wait_ms))
                # A probe adds one batch per record.
                held["records"] += row["sent"]
                held["batches"] += row["sent"]
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def wait_run(args) -> list[dict]:
    rows = []
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap_servers, [TOPIC], 1)
        proc = psutil.Process(broker.pid)
        for wait_ms in args.waits:
            end = end_offset(broker.bootstrap_servers)
            row = {"fetch_wait_ms": wait_ms, "rate": args.probe_rate, "held_records": end}
            row.update(probe(broker.bootstrap_servers, proc, end, args.probe_rate, args.probe_s, wait_ms))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", choices=["fill", "wait"], default="fill")
    parser.add_argument("--records-per-batch", type=ints, default=[1, 20])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-records", type=ints, default=[7_000, 140_000], help="one per --records-per-batch")
    parser.add_argument("--record-bytes", type=int, default=100)
    parser.add_argument("--probe-rate", type=int, default=1000)
    parser.add_argument("--probe-s", type=float, default=2.0)
    parser.add_argument("--waits", type=ints, default=[10, 50])
    args = parser.parse_args()
    if args.experiment == "wait":
        wait_run(args)
        return
    for per_batch, records in zip(args.records_per_batch, args.step_records, strict=True):
        fill_run(args, per_batch, records)


if __name__ == "__main__":
    main()
