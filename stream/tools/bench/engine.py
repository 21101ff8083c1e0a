"""The engine in-process: µs per event at B events per partition per call, and the fixed cost of a call.

Every stage of the plan runs as the worker runs it (stream/worker/gather.py):
one `Engine.process_many` call takes a chunk of B messages from each of the
partitions together. Stage 0 reads the events, keyed as producers key them;
what it forwards goes to the next stage's partitions in the order it was
produced, and that stage reads it in calls of B per partition likewise. The
state is a dict updated with each call's writes, as the table would be.

Each batch size is timed in CPU seconds of this process over the same
events; sizes take turns over several rounds and the median is kept, so they
share the machine's noise. The fixed cost of a call is the intercept of
time per call against events per call, fitted per stage through the two
smaller sizes (a call's cost is linear there; at the largest, caches and
LightGBM's batch cost bend it).
"""

from __future__ import annotations

import statistics
import time
import zlib

from stream.tools.bench.report import done, model_info, step

SIZES = (5, 50, 500)
ROUNDS = 3


def stage_inputs(engine, payloads, partitions: int) -> list[list[list]]:
    """The messages each stage reads, per partition (the earlier stages run once, here, at the largest size)."""
    from stream.pipeline.outcomes import Message

    now_ms = int(time.time() * 1000)
    queues = [[[] for _ in range(partitions)] for _ in engine.stages]
    for key, value, _ in payloads:
        queue = queues[0][zlib.crc32(key) % partitions]
        queue.append(Message(key, value, len(queue), now_ms))
    for stage in range(engine.last_stage):
        state: dict = {}
        nxt_topic = engine.repartition_topics[stage + 1]
        for _, outcomes in calls(engine, stage, queues[stage], max(SIZES), state):
            for outcome in outcomes:
                for out in outcome.outputs:
                    if out.topic == nxt_topic:
                        nxt = queues[stage + 1][zlib.crc32(out.key) % partitions]
                        nxt.append(Message(out.key, out.value, len(nxt), now_ms))
    return queues


def calls(engine, stage: int, queues: list[list], size: int, state: dict):
    """(events in the call, outcomes) for each call of `size` messages per partition, all partitions together."""
    longest = max((len(q) for q in queues), default=0)
    for lo in range(0, longest, size):
        parts = [(p, q[lo : lo + size]) for p, q in enumerate(queues) if q[lo : lo + size]]
        outcomes = engine.process_many(stage, parts, state)
        for outcome in outcomes:
            state.update(outcome.writes)
        yield sum(len(m) for _, m in parts), outcomes


def time_stage(engine, stage: int, queues: list[list], size: int) -> tuple[float, int, int, int]:
    """(CPU seconds, events, calls, predictions) of one stage over its inputs at one size, from empty state."""
    state: dict = {}
    n = n_calls = predictions = 0
    started = time.process_time()
    for events, outcomes in calls(engine, stage, queues, size, state):
        n += events
        n_calls += 1
        predictions += sum(o.predictions for o in outcomes)
    return time.process_time() - started, n, n_calls, predictions


def measure_engine(engine, payloads, partitions: int = 4, rounds: int = ROUNDS, sizes=SIZES) -> dict:
    """µs per event of all stages together at each size, per stage, and the fixed cost per call."""
    t = step(f"engine in-process: {len(payloads):,} events, {len(engine.stages)} stages, {partitions} partitions, "
             f"B = {', '.join(map(str, sizes))} per partition per call, {rounds} rounds")
    queues = stage_inputs(engine, payloads, partitions)
    runs: dict[tuple[int, int], list[tuple[float, int, int, int]]] = {}
    for _ in range(rounds):
        for size in sizes:
            for stage in range(len(engine.stages)):
                runs.setdefault((stage, size), []).append(time_stage(engine, stage, queues[stage], size))
    per_stage: dict[int, dict[int, dict]] = {}
    for (stage, size), timed in runs.items():
        seconds = statistics.median(s for s, _, _, _ in timed)
        _, n, n_calls, _ = timed[0]
        per_stage.setdefault(stage, {})[size] = {"us_per_event": seconds / max(n, 1) * 1e6,
                                                 "ms_per_call": seconds / max(n_calls, 1) * 1e3,
                                                 "events_per_call": n / max(n_calls, 1)}
    last = len(engine.stages) - 1
    report = {
        "events": len(payloads),
        # Predictions at each size (the same whatever the size: the batching must not change what is answered).
        "predictions": {str(size): runs[(last, size)][0][3] for size in sizes},
        "partitions": partitions,
        "us_per_event": {str(size): round(sum(per_stage[s][size]["us_per_event"] for s in per_stage), 1)
                         for size in sizes},
        "per_stage_us_per_event": {str(s): {str(size): round(v["us_per_event"], 1) for size, v in by.items()}
                                   for s, by in per_stage.items()},
        "fixed_ms_per_call": {str(s): round(_intercept(by, sizes[:2]), 3) for s, by in per_stage.items()},
    }
    report["fixed_ms_per_call_all_stages"] = round(sum(report["fixed_ms_per_call"].values()), 3)
    done(t, f"µs/event {report['us_per_event']}, fixed ms/call {report['fixed_ms_per_call']}")
    return report


def _intercept(by_size: dict, sizes) -> float:
    """ms per call at zero events, through the two sizes' (events per call, ms per call)."""
    (x0, y0), (x1, y1) = ((by_size[s]["events_per_call"], by_size[s]["ms_per_call"]) for s in sizes)
    if x1 == x0:
        return y0
    return y0 - (y1 - y0) / (x1 - x0) * x0


def run(args, workload, work) -> dict:
    """`sluice bench --engine`: prepare the workload's repo and model, then time the engine on its live events."""
    from features.feast_repo import load_plan, open_store
    from stream.settings import Settings
    from stream.worker.app import build_engine, tune_gc
    from stream.tools.workload import keyed

    n = args.events
    t = step(f"preparing {workload.name}: a repo and a {args.engine_trees}-tree model")
    prepared = workload.prepare(work, entities=max(500, n // 40), seed=args.seed, topic="bench-engine",
                                trees=args.engine_trees)
    plan = load_plan(open_store(prepared.path))
    payloads = [keyed(plan, p) for p in workload.live_events(n, seed=args.seed)]
    done(t)
    # The worker's own composition: its settings (SLUICE_* variables apply, as in a worker), the batch
    # features through the online store.
    settings = Settings.from_env(app_id="bench", repo_path=prepared.path, model_dir=prepared.model_dir,
                        partitions=args.partitions, batch_max=max(SIZES))
    engine, _ = build_engine(settings)
    tune_gc()  # the worker's collector settings, applied at the same point: after start-up
    serving = engine.serving
    report = measure_engine(engine, payloads, args.partitions, rounds=2 if args.quick else ROUNDS)
    report["model"] = model_info(prepared.model_dir)
    report["serving"] = {"reason_k": serving.reason_k, "reason_method": serving.reason_method,
                         "reason_share": serving.reason_share, "reasons": settings.reasons,
                         "compiled_scorer": settings.compiled_scorer}
    return report
