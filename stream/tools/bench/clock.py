"""What the arrival clock costs in latency: one worker with it, one without, at the same paced rates.

Both workers score the same paced events, each from an events topic of its
own (a copy of the repo reading it). "ordered" is the default: the merchant
stage folds in arrival order, holding each record until every events
partition has passed it (stream/pipeline/clock.py). "unordered" releases
every record as it comes (SLUICE_CLOCK_WAIT_MS=0, no ticks): the order
before the clock, which depends on processing speed. The difference of their
latencies, measured in the same run, is what determinism costs.
"""

from __future__ import annotations

from pathlib import Path

from stream.kafka.clients import ensure_topics, warmed_producer
from stream.kafka.reader import TopicReader
from stream.tools.bench.latency import phase_text, rate_run, run_id
from stream.tools.bench.report import done, step
from stream.tools.bench.serving import _own_topic_copy
from stream.tools.process import worker_process

VARIANTS = {"ordered": {}, "unordered": {"SLUICE_CLOCK_WAIT_MS": "0", "SLUICE_CLOCK_TICK_MS": "0"}}


def measure_clock(bootstrap: str, work: Path, prepared, paced: list, partitions: int, rates: list[int], seconds: float) -> dict:
    """Per rate: p50/p99 event -> prediction with and without the arrival clock, and what it adds."""
    out: dict[str, dict] = {}
    for variant, env in VARIANTS.items():
        rid = run_id()
        repo_path, topic = _own_topic_copy(prepared.path, Path(work) / f"clock-repo-{rid}", f"clock-events-{rid}")
        predictions = f"clock-pred-{rid}"
        ensure_topics(bootstrap, [topic, predictions], partitions)
        worker = worker_process(
            bootstrap, repo_path, prepared.model_dir, work, f"clock-{variant}-{rid}", app_id=f"clock-{rid}",
            partitions=partitions, env={"SLUICE_PREDICTIONS_TOPIC": predictions, "SLUICE_PREDICTION_LOG_TOPIC": f"{predictions}.log", **env},
        )
        reader = TopicReader(bootstrap, predictions, partitions=partitions)
        producer = warmed_producer(bootstrap, f"{topic}.warmup")
        try:
            worker.start().wait_ready(timeout_s=180)
            reader.start()
            pos = 0
            for rate in rates:
                n = int(rate * seconds)
                t = step(f"arrival clock {variant}: {rate:,} events/s for {seconds:g} s")
                phase = rate_run(producer, topic, reader, paced[pos : pos + n], rate)
                pos += n
                done(t, phase_text(phase))
                out.setdefault(str(rate), {})[variant] = phase
        finally:
            reader.stop()
            worker.stop()
    for phases in out.values():
        ordered, unordered = phases.get("ordered", {}), phases.get("unordered", {})
        for q in ("p50_ms", "p99_ms"):
            if q in ordered and q in unordered:
                phases[f"added_{q}"] = round(ordered[q] - unordered[q], 1)
    return out
