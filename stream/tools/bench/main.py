"""`sluice bench`: Sluice, a naive per-event Faust service and a parse-only Faust
agent, side by side on the same events and the same model.

What is measured, and how:

* Throughput: the system's input topic is filled first (a backlog), then the
  system starts. Events/s is N over the time between the first and the N-th
  output, both read from the outputs' own Kafka timestamps (set when the
  system produced them), so the benchmark's reading speed does not count.
  "From ready" counts from when the system held its partitions instead.
* Latency: after the backlog, events are produced at fixed rates with the
  producer's CreateTime; latency is the output's Kafka timestamp minus the
  input's, per event id. One yardstick for all three systems.
* Peak RSS of the system's processes (children included), sampled every 0.2 s.
* Two Sluice workers in one consumer group on the same backlog.
* State memory per entity and offline feature speed, in this process.

Every system runs in its own processes, started the way production starts
them (`sluice worker` through WorkerProcess), so whatever the worker does
today is what gets measured.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from features.errors import SluiceError
from stream.kafka.clients import PRODUCER_LINGER_MS
from stream.pipeline.events import parse_timestamp_ms
from stream.tools.bench.latency import broker_hop_latency, run_id
from stream.tools.bench.offline_speed import measure_offline
from stream.tools.bench import batch_memory
from stream.tools.bench import online_push as push_bench
from stream.tools.bench import reasons as reasons_bench
from stream.tools.bench import serve as serve_bench
from stream.tools.bench.report import done, machine, model_info, print_table, step
from stream.tools.bench.state_memory import measure_state
from stream.tools.bench.systems import SystemBench
from stream.tools.workload import Prepared, Workload, keyed

#: Linger (ms) of the paced events' producer on the embedded broker. Tansu's
#: memory storage keeps every produced batch as one object and lists them all
#: on each read that finds new data, so its fetches slow with the batches a
#: partition holds; a producer that gathers a few ms of records sends fewer
#: (docs/performance.md, "Why the embedded broker's cost grows"). Apache Kafka
#: has no such cost: with --bootstrap-servers the producers' own default is used.
EMBEDDED_INPUT_LINGER_MS = 10.0

#: Events for the deploy-to-first-prediction runs: 3 swaps at 300 events/s, with room.
SWAP_EVENTS = 15_000
QUICK = {"events": 2000, "naive_events": 300, "rates": "1000", "rate_seconds": 3.0,
         "state_entities": 20_000, "offline_events": 20_000,
         "batch_events": 100_000, "batch_entities": 4_000, "batch_shard_rows": 25_000}
#: The defaults of the options --quick makes small; a value given on the command line is kept either way.
DEFAULTS = {"events": 200_000, "naive_events": 5_000, "rates": "1000,5000,20000", "rate_seconds": 10.0,
            "state_entities": 1_000_000, "offline_events": 1_000_000,
            "batch_events": 5_000_000, "batch_entities": 200_000, "batch_shard_rows": 500_000}


def add_parser(subparsers, workload_for) -> None:
    """`workload_for(repo_path)` gives the Workload to run (the CLI passes the demo's)."""
    p = subparsers.add_parser(
        "bench", help="measure Sluice against a naive Faust service and a parse-only Faust agent, same events and model"
    )
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers; default: start the embedded broker")
    p.add_argument("--repo", dest="repo_path", default="feature_repo", help="Feast repo whose definitions are used")
    p.add_argument("--events", type=int, help="backlog events for Sluice and the parse-only agent (default 200,000; --quick 2,000)")
    p.add_argument("--naive-events", type=int, help="backlog events for the naive service, which is slow (default 5,000; --quick 300)")
    p.add_argument("--rates", help="input rates (events/s) for the latency runs (default 1000,5000,20000; --quick 1000)")
    p.add_argument("--rate-seconds", type=float, help="seconds per latency run (default 10; --quick 3)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the benchmark's topics (default 4)")
    p.add_argument("--input-linger-ms", type=float,
                   help="linger of the producer that sends the paced events (default 10 on the embedded broker, which "
                        "pays per stored batch; else the producers' default, 2): latency counts from each produce call, "
                        "so the linger is inside every figure")
    p.add_argument("--state-entities", type=int, help="entities for the state-memory measurement (default 1,000,000; --quick 20,000)")
    p.add_argument("--offline-events", type=int, help="events for the offline-speed measurement (default 1,000,000; --quick 20,000)")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated events (default 7)")
    p.add_argument("--work-dir", help="keep repos, models and worker logs here (default: a temp dir, removed)")
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes, one short rate (well under a minute); options given are kept")
    p.add_argument("--labels", action="store_true",
                   help="only the label join: labels/s, and what it costs the scoring worker off, inline and as a service")
    p.add_argument("--clock", action="store_true", help="also the arrival clock: latency with and without it, at --rates")
    p.add_argument("--latency", action="store_true",
                   help="only Sluice's latency: one worker reads the backlog, then the paced runs at --rates "
                        "(no baselines, state, offline or serving figures; under a minute with --quick)")
    p.add_argument("--engine", action="store_true",
                   help="only the engine in-process: µs per event at 5, 50 and 500 events per partition per call, "
                        "and the fixed cost of a call (no broker)")
    p.add_argument("--engine-trees", type=int, default=200, help="trees of the model --engine trains (default 200)")
    p.add_argument("--peers", action="store_true",
                   help="also Quix Streams (extra 'peers') on per-entity sliding windows: same events, rates and broker")
    batch_memory.add_arguments(p)
    serve_bench.add_arguments(p)
    push_bench.add_arguments(p)
    reasons_bench.add_arguments(p)
    p.set_defaults(func=lambda args: run(args, workload_for(Path(args.repo_path))))


def sizes(args) -> None:
    """Fill in the sizes the command line left out: --quick's small ones, or the defaults."""
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else value)


def input_linger_ms(given: float | None, embedded: bool) -> float:
    """The paced events' producer linger: as given, else by broker (EMBEDDED_INPUT_LINGER_MS)."""
    if given is not None:
        return given
    return EMBEDDED_INPUT_LINGER_MS if embedded else PRODUCER_LINGER_MS


def run(args, workload: Workload) -> int:
    sizes(args)
    rates = sorted(int(float(r)) for r in str(args.rates).split(",") if r.strip())
    if not (Path(args.repo_path) / "feature_store.yaml").exists():
        msg = f"no Feast repo at {args.repo_path}: pass --repo (the demo's is feature_repo/)"
        raise SluiceError(msg)
    with contextlib.ExitStack() as stack:
        if args.work_dir:
            work = Path(args.work_dir).resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-bench-")))
        if args.engine:  # one measurement alone, in this process (docs/performance.md)
            from stream.tools.bench.engine import run as engine_run

            print(json.dumps({"machine": machine("none"), "engine": engine_run(args, workload, work)}), flush=True)
            return 0
        if args.batch_memory:  # one measurement alone, commands in processes of their own (docs/performance.md)
            print(json.dumps({"machine": machine("none"), "batch_memory": batch_memory.measure(args, workload, work)}), flush=True)
            return 0
        bootstrap, broker_kind = args.bootstrap_servers, args.bootstrap_servers
        if bootstrap is None:
            from stream.kafka.broker import EmbeddedBroker

            broker = stack.enter_context(EmbeddedBroker())
            bootstrap, broker_kind, broker_pid = broker.bootstrap_servers, "embedded tansu", broker.pid
        else:
            broker_pid = None  # a broker of its own: its CPU is not ours to read
        args.input_linger_ms = input_linger_ms(args.input_linger_ms, embedded=broker_pid is not None)
        if args.labels:  # one measurement alone (docs/lifecycle.md, the label join's cost)
            from stream.tools.bench.labels import measure_labels

            load = BenchLoad.build(workload, args, [], work)
            labels = measure_labels(bootstrap, work, load.prepared, load.plan, load.backlog, args.partitions)
            print(json.dumps({"machine": machine(broker_kind), "config": load.describe(args, []), "labels": labels}), flush=True)
            return 0
        if args.reasons:  # one measurement alone (docs/lifecycle.md, reason codes)
            report = {"machine": machine(broker_kind), "reasons": reasons_bench.measure_reasons(args, workload, bootstrap, work)}
            print(json.dumps(report), flush=True)
            return 0
        if args.serve or args.online_push:  # one measurement alone (docs/serving.md)
            measure = serve_bench.measure_serve if args.serve else push_bench.measure_online_push
            report = {"machine": machine(broker_kind), "serve" if args.serve else "online_push": measure(args, workload, bootstrap, work)}
            print(json.dumps(report), flush=True)
            return 0
        if args.latency:  # one measurement alone (docs/performance.md, latency)
            load = BenchLoad.build(workload, args, rates, work)
            bench = SystemBench(bootstrap, work, args.partitions, load, args.rate_seconds, broker_pid, args.input_linger_ms)
            report = {"machine": machine(broker_kind), "config": load.describe(args, rates),
                      "sluice": bench.measure("sluice", bench.sluice_launcher(), load.backlog, rates)}
            print(json.dumps(report), flush=True)
            return 0
        report = {"machine": machine(broker_kind), **_bench(args, workload, rates, bootstrap, work, broker_pid)}
    print_table(report)
    print(json.dumps(report), flush=True)
    return 0


def _bench(args, workload: Workload, rates: list[int], bootstrap: str, work: Path, broker_pid: int | None) -> dict:
    load = BenchLoad.build(workload, args, rates, work)
    bench = SystemBench(bootstrap, work, args.partitions, load, args.rate_seconds, broker_pid, args.input_linger_ms)
    report = {"config": load.describe(args, rates)}
    print("· broker floor: one produce -> consume hop at 1,000 events/s", flush=True)
    report["broker_hop"] = broker_hop_latency(bootstrap, rate=1000, seconds=min(5.0, max(2.0, args.rate_seconds)))
    # Both Sluice runs read the repo's topic while it holds only the backlog
    # (separate consumer groups, so each reads all of it); the single worker's
    # rate runs append to it afterwards, so the two-worker run goes first.
    two = bench.measure("two", bench.sluice_launcher(workers=2), load.backlog, [])
    report["sluice"] = bench.measure("sluice", bench.sluice_launcher(), load.backlog, rates)
    report["naive"] = bench.measure("naive", bench.faust_launcher("naive"), load.backlog[: args.naive_events], rates)
    report["faust_parse"] = bench.measure("parse", bench.faust_launcher("parse"), load.backlog, rates)
    if getattr(args, "peers", False):
        from stream.tools.bench.systems import measure_peers

        report.update(measure_peers(bench, rates))
    report["two_workers"] = two
    report["two_workers"]["ratio_to_one"] = _ratio(report["two_workers"]["events_per_s"], report["sluice"]["events_per_s"])
    print(f"· state memory: {args.state_entities:,} entities", flush=True)
    # Synthetic events from the time the live ones start (only time differences matter).
    start_ms = parse_timestamp_ms(orjson.loads(load.backlog[0][1])[load.plan.schema.timestamp_field])
    report["state"] = measure_state(load.plan, args.state_entities, args.seed, start_ms)
    print(f"· offline speed: {args.offline_events:,} events", flush=True)
    report["offline"] = measure_offline(load.plan, workload.history(args.offline_events))
    if getattr(args, "clock", False):
        from stream.tools.bench.clock import measure_clock

        report["clock"] = measure_clock(bootstrap, work, load.prepared, load.paced, args.partitions, rates, args.rate_seconds)
    from stream.tools.bench.serving import measure_serving_costs, measure_swap

    serving_events = load.backlog[:20_000]
    quick = bool(args.quick)
    report["serving"] = measure_serving_costs(
        load.plan, load.prepared.model_dir, serving_events, args.partitions, rounds=2 if quick else 5
    )
    # Its own events, enough for the swaps at their rate (a worker of its own, on a topic of its own).
    swap_events = [keyed(load.plan, p) for p in workload.live_events(SWAP_EVENTS, seed=args.seed + 1)]
    report["serving"]["deploy_to_first_prediction"] = measure_swap(
        bootstrap, work, load.prepared, swap_events, args.partitions, swaps=1 if quick else 3
    )
    from stream.tools.bench.drift import measure_drift

    print("· drift monitor: parse and window updates per prediction-log record", flush=True)
    report["monitor"] = measure_drift(load.plan, load.prepared.model_dir, serving_events, args.partitions)
    report["ratios"] = {
        "sluice_vs_faust_parse": _ratio(report["sluice"]["events_per_s"], report["faust_parse"]["events_per_s"]),
        "sluice_vs_naive": _ratio(report["sluice"]["events_per_s"], report["naive"]["events_per_s"]),
        "two_vs_one": report["two_workers"]["ratio_to_one"],
        "offline_vs_pandas": report["offline"]["speedup_vs_pandas"],
    }
    if report.get("quix", {}).get("events_per_s"):
        report["ratios"]["sluice_vs_quix"] = _ratio(report["sluice"]["events_per_s"], report["quix"]["events_per_s"])
    return report


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# -- the workload ------------------------------------------------------------


@dataclass
class BenchLoad:
    """One prepared repo + model, and the events every system gets.

    `backlog` comes first in event time, `paced` (for the latency runs)
    after it, so a worker that read the backlog sees the paced events as
    new ones rather than as late ones.
    """

    prepared: Prepared
    plan: object  # features.spec.FeaturePlan
    backlog: list[tuple[bytes, bytes, bytes]]  # (key, value, event id)
    paced: list[tuple[bytes, bytes, bytes]]
    model: dict
    entities: int

    @classmethod
    def build(cls, workload: Workload, args, rates: list[int], work: Path) -> BenchLoad:
        from features.feast_repo import load_plan, open_store

        paced_n = int(sum(r * args.rate_seconds for r in rates))
        entities = max(500, args.events // 4)
        t = step(f"preparing {workload.name}: a repo ({entities:,} entities) and a 200-tree model")
        prepared = workload.prepare(work, entities=entities, seed=args.seed, topic=f"bench-{run_id()}-sluice", trees=200)
        model = model_info(prepared.model_dir)
        done(t, f"model {model['version']}, validation AUC {model['validation_auc']:.3f}")
        total = args.events + paced_n
        t = step(f"generating {total:,} live events")
        plan = load_plan(open_store(prepared.path))
        events = [keyed(plan, p) for p in workload.live_events(total, seed=args.seed)]
        done(t)
        return cls(prepared, plan, events[: args.events], events[args.events :], model, entities)

    def describe(self, args, rates: list[int]) -> dict:
        return {
            "events": len(self.backlog),
            "naive_events": min(args.naive_events, len(self.backlog)),
            "rates": rates,
            "rate_seconds": args.rate_seconds,
            "partitions": args.partitions,
            "input_linger_ms": args.input_linger_ms,
            "entities": self.entities,
            "model": self.model,
            "quick": bool(args.quick),
        }
