"""The engine's calls timed with an older checkout's steps and with this one's, in one process: a helper, not a test.

On a shared host `sluice bench --engine` spreads more from run to run than a
change of a few per cent moves it. This times the same calls (the same
messages, the same state before each) with the steps of a base checkout
swapped in and out of one engine, alternating, and keeps the minimum of
several repeats of each call, which the host's other work can only raise:

    PYTHONPATH=$PWD python tests/stream/tools/ab_engine_calls.py BASE_CHECKOUT [events]

It swaps what the engine calls through its objects and one function: the
window step (features/online.py with the base's features/state.py and
features/windows.py), the decoder, the validator, the record writer, the
predictor and the forwarding step. A change elsewhere needs its module added
to `swap`. Prints, per stage and size, ms per call and µs per event of each.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
import timeit
from pathlib import Path

from stream.pipeline import engine as engine_module
from stream.tools.bench import engine as bench_engine
from stream.worker.app import tune_gc
from tests.stream.tools.hash_engine_outputs import demo_engine

SIZES = {5: 20, 500: 3}  # calls per partition of each, and how many of them are timed (spread over the stream)


def _load(base: Path, name: str, path: str, **patch):
    spec = importlib.util.spec_from_file_location(f"base_{name}", base / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for key, value in patch.items():
        setattr(module, key, value)
    return module


def swap(engine, base: Path):
    """A function that makes `engine` use the base checkout's steps (True) or this one's (False)."""
    windows = _load(base, "windows", "features/windows.py")
    state = _load(base, "state", "features/state.py", Items=windows.Items)
    online = _load(base, "online", "features/online.py", st=state, Items=windows.Items, Queries=windows.Queries,
                   aggregate=windows.aggregate)
    old = {"aggregators": online.StageAggregator, "decoder": _load(base, "decode", "stream/pipeline/decode.py").Decoder,
           "validator": _load(base, "events", "stream/pipeline/events.py").EventValidator,
           "records": _load(base, "records", "stream/pipeline/records.py").PredictionRecords,
           "predictor": _load(base, "predict", "stream/pipeline/predict.py").Predictor}
    new = {"aggregators": type(engine.aggregators[0]), "decoder": type(engine.decoder), "validator": type(engine.validator),
           "records": type(engine.records), "predictor": type(engine.predictor)}
    forwards = {True: _load(base, "handoff", "stream/pipeline/handoff.py").forward, False: engine_module.forward}

    def use(base_steps: bool) -> None:
        classes = old if base_steps else new
        for aggregator in engine.aggregators:
            aggregator.__class__ = classes["aggregators"]
        for name in ("decoder", "validator", "records", "predictor"):
            getattr(engine, name).__class__ = classes[name]
        engine_module.forward = forwards[base_steps]

    return use


def fixed_calls(engine, queues, stage: int, size: int, count: int) -> list:
    """(parts, the state before them) of `count` calls of `size` messages per partition, past the first tenth."""
    starts = range(0, max(len(q) for q in queues[stage]), size)
    step = max(1, (len(starts) - len(starts) // 10) // count)
    picks = set(range(len(starts) // 10, len(starts), step)[:count])
    state: dict = {}
    picked = []
    for k, lo in enumerate(starts):
        parts = [(p, q[lo : lo + size]) for p, q in enumerate(queues[stage]) if q[lo : lo + size]]
        if k in picks:
            picked.append((parts, dict(state)))
        for outcome in engine.process_many(stage, parts, state):
            state.update(outcome.writes)
    return picked


def main(base: Path, n: int, work: Path) -> None:
    engine, _, payloads = demo_engine(n, work)
    tune_gc()  # as the bench: the worker's collector settings
    queues = bench_engine.stage_inputs(engine, payloads, 4)
    use = swap(engine, base)
    for size, count in SIZES.items():
        number = 3 if size < 100 else 1
        for stage in range(len(engine.stages)):
            use(False)
            calls = fixed_calls(engine, queues, stage, size, count)
            events = statistics.mean(sum(len(m) for _, m in parts) for parts, _ in calls)
            rounds: dict[bool, list[float]] = {True: [], False: []}
            for r in range(4):
                for base_steps in (True, False) if r % 2 == 0 else (False, True):
                    use(base_steps)
                    total = 0.0
                    for parts, state in calls:
                        timer = timeit.Timer(lambda: engine.process_many(stage, parts, state), timer=time.process_time)
                        total += min(timer.repeat(repeat=5, number=number)) / number
                    rounds[base_steps].append(total / len(calls))
            b, a = min(rounds[True]), min(rounds[False])
            print(f"B = {size} stage {stage} ({len(calls)} calls, {events:.0f} events each): ms per call "
                  f"{b * 1e3:.3f} (base) -> {a * 1e3:.3f}; µs per event {b / events * 1e6:.1f} -> {a / events * 1e6:.1f}",
                  flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 20000,
         Path(sys.argv[3] if len(sys.argv) > 3 else "/tmp/sluice-ab"))
