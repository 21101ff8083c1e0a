"""A hash of every output and state write of every engine stage at B = 5, 50 and 500: a helper, not a test.

A change meant to make the engine faster must leave what it writes
unchanged, byte for byte. Run this before and after (same events, same
seed) and compare the lines it prints:

    PYTHONPATH=$PWD python tests/stream/tools/hash_engine_outputs.py [events] [work dir]

It drives the engine as `sluice bench --engine` does (stream/tools/bench/engine.py),
with the messages' Kafka time fixed. What is measured, not computed, is blanked
before hashing: `scored_at` and `latency_ms` in the prediction records, each
stage's feature time in a forwarded record. The model is trained again on
every run, so its version (a time) is replaced by a placeholder; its scores
are the same, the training being seeded.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import orjson

from features.feast_repo import load_plan, open_store
from fraud_demo.workload import FraudWorkload
from stream.pipeline.forwarded import ForwardedRow
from stream.settings import Settings
from stream.tools.bench import engine as bench_engine
from stream.tools.workload import keyed
from stream.worker.app import build_engine

MEASURED = ("scored_at", "latency_ms")
STAGE_MS = ForwardedRow._fields.index("stage_ms")
KAFKA_TIME_S = 1_800_000_000.0


def computed(value: bytes, version: bytes) -> bytes:
    """The record without what was measured when it was written."""
    value = value.replace(version, b"<version>")
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    if type(record) is list and len(record) == len(ForwardedRow._fields) and type(record[0]) is dict:
        record[STAGE_MS] = None
        return b"forwarded:" + orjson.dumps(record)
    if type(record) is dict and any(k in record for k in MEASURED):
        return b"record:" + orjson.dumps({k: (None if k in MEASURED else v) for k, v in record.items()})
    return value


def demo_engine(n: int, work: Path):
    """(engine, prepared workload, n live events) as `sluice bench --engine` builds them, seed 7, in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    workload = FraudWorkload(Path("feature_repo"))
    prepared = workload.prepare(work, entities=max(500, n // 40), seed=7, topic="bench-engine", trees=200)
    plan = load_plan(open_store(prepared.path))
    payloads = [keyed(plan, p) for p in workload.live_events(n, seed=7)]
    settings = Settings.from_env(app_id="bench", repo_path=prepared.path, model_dir=prepared.model_dir,
                                 partitions=4, batch_max=500)
    engine, _ = build_engine(settings)
    return engine, prepared, payloads


def main(n: int, work: Path) -> None:
    engine, prepared, payloads = demo_engine(n, work)
    version = (Path(prepared.model_dir) / "champion").read_text().strip().encode()
    bench_engine.time = SimpleNamespace(time=lambda: KAFKA_TIME_S, process_time=time.process_time)
    queues = bench_engine.stage_inputs(engine, payloads, 4)
    total = hashlib.sha256()
    for size in (5, 50, 500):
        for stage in range(len(engine.stages)):
            h, state, outputs, writes = hashlib.sha256(), {}, 0, 0
            for _, outcomes in bench_engine.calls(engine, stage, queues[stage], size, state):
                for o in outcomes:
                    for out in o.outputs:
                        h.update(repr((out.topic, out.key, out.headers, out.partition)).encode())
                        h.update(computed(out.value, version))
                    for key in sorted(o.writes):
                        h.update(key.encode())
                        h.update(o.writes[key] or b"<none>")
                    h.update(repr((o.predictions, o.dlq, o.late, o.replayed, len(o.latencies_s))).encode())
                    outputs, writes = outputs + len(o.outputs), writes + len(o.writes)
            print(f"B = {size} stage {stage}: {outputs} outputs, {writes} writes, {h.hexdigest()[:16]}", flush=True)
            total.update(h.digest())
    print("all:", total.hexdigest())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000, Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/sluice-hash"))
