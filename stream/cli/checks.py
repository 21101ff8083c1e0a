"""`sluice parity` and `sluice chaos`: the commands that check Sluice itself on the demo workload.

Both generate a disordered card-fraud stream (fraud_demo, wired in here and
for `sluice bench` through `demo_workload`), run real workers against it and
read every outcome back from the topics.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from features.errors import SluiceError
from stream.cli import options
from stream.settings import Settings


def demo_workload(repo_path: Path):
    """The workload the tools run: the card-fraud demo over the repo's definitions (the one place it is wired in)."""
    from fraud_demo.workload import FraudWorkload

    return FraudWorkload(repo_path)


def _demo_stream(settings: Settings, work: Path, args, name: str):
    """A small repo with a model in `work`, and `args.events` disordered events after its history."""
    workload = demo_workload(settings.repo_path)
    entities = max(200, args.events // 10)
    print(f"preparing {workload.name}: a repo ({entities:,} entities) and a model in {work}", flush=True)
    prepared = workload.prepare(work, entities=entities, seed=args.seed, topic=f"{name}-{int(time.time())}", trees=20)
    return prepared, workload.live_events(args.events, seed=args.seed, disorder_ms=args.disorder_ms)


def cmd_parity(args, settings_of, reach) -> int:
    settings = reach(settings_of(args))
    import json
    import tempfile

    from stream.kafka.broker import EmbeddedBroker
    from stream.tools.parity import run_parity

    partitions = settings.partitions  # --partitions, else SLUICE_PARTITIONS, else 4
    if not (settings.repo_path / "feature_store.yaml").is_file():
        msg = (
            f"sluice parity copies the demo feature repo's definitions from {settings.repo_path}, which is not a Feast repo; "
            "run it from the Sluice checkout or pass --repo pointing at feature_repo/"
        )
        raise SluiceError(msg)
    with tempfile.TemporaryDirectory(prefix="sluice-parity-") as tmp, contextlib.ExitStack() as stack:
        bootstrap = settings.bootstrap_servers
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap_servers
        prepared, payloads = _demo_stream(settings, Path(tmp), args, "parity")
        report = run_parity(
            bootstrap, prepared.path, prepared.model_dir, payloads, Path(tmp), partitions=partitions, kill_at=args.kill_at,
            from_archive=args.from_archive,
        )
    print(f"events replayed      {report.events:,} (out of order by up to {args.disorder_ms} ms, {partitions} partitions)")
    print(f"worker restarts      {report.restarts} (SIGKILL at {args.kill_at:.0%} of the predictions)")
    print(f"log records compared {report.compared:,} ({report.values:,} feature values; {report.duplicates} duplicate records)")
    print(f"late (online/offline) {report.late_online}/{report.late_offline}")
    print(f"offline order        {'arrival: archive of the events topic' if args.from_archive else 'read back from the topics'}")
    print(f"mismatches           {report.mismatches}")
    print(f"largest difference   abs {report.max_abs_diff:.3g}, rel {report.max_rel_diff:.3g}")
    for example in report.examples:
        print(f"  e.g. {example}")
    print(json.dumps({
        "events": report.events, "compared": report.compared, "values": report.values, "mismatches": report.mismatches,
        "max_abs_diff": report.max_abs_diff, "max_rel_diff": report.max_rel_diff, "late": report.late_online,
        "duplicates": report.duplicates, "restarts": report.restarts, "seconds": round(report.seconds, 1),
    }))
    return 0 if report.ok else 1


def cmd_chaos(args, settings_of) -> int:
    import json
    import tempfile

    from stream.kafka.broker import EmbeddedBroker
    from stream.tools.chaos import Faults, run_chaos

    settings = settings_of(args)
    faults = Faults(kills=args.kills, rebalances=args.rebalances, broker_pauses=args.broker_pauses, pause_s=args.pause_s)
    if args.events is None:
        args.events = int(args.duration * args.rate)
    with tempfile.TemporaryDirectory(prefix="sluice-chaos-") as tmp, EmbeddedBroker() as broker:
        prepared, payloads = _demo_stream(settings, Path(tmp), args, "chaos")
        hostile = []
        if args.hostile:
            from features.feast_repo import load_plan, open_store
            from stream.tools.hostile import spread_corpus

            plan = load_plan(open_store(prepared.path))
            placed = spread_corpus(plan.schema, plan.partition_key, payloads, seed=args.seed)
            hostile = [(at, m.key, m.value) for at, m in placed]
        report = run_chaos(
            broker.bootstrap_servers, broker.pid, prepared.path, prepared.model_dir, payloads, hostile, Path(tmp),
            partitions=settings.partitions, rate=args.rate, faults=faults, seed=args.seed,
            worker_args=["--store", settings.store],
        )
    print(f"kills {report.kills}, rebalances {report.rebalances}, broker pauses {report.broker_pauses}")
    for fault in report.faults:
        print(f"  {fault}")
    for example in report.examples:
        print(f"  e.g. {example}")
    print(json.dumps(report.line()))
    return 0 if report.ok else 1


def add_parsers(sub, settings_of, reach) -> None:
    """`settings_of(args)` builds the Settings; `reach(settings)` checks that a named broker answers."""
    p = sub.add_parser("parity", help="replay a disordered stream through workers with a crash; compare every feature with offline")
    options.add_broker(p, "embedded")
    options.add_repo(p, service=False)
    options.add_partitions(p)
    options.add_log_level(p)
    p.add_argument("--events", type=int, default=200_000, help="events to replay (default 200000)")
    p.add_argument(
        "--disorder-ms", type=int, default=120_000, help="arrival order differs from event time by up to this (default 120000)"
    )
    p.add_argument(
        "--kill-at", type=float, default=0.5, help="SIGKILL the first worker after this share of predictions (default 0.5)"
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the generated stream (default 7)")
    p.add_argument(
        "--from-archive", action="store_true",
        help="compute offline from an archive of the events topic (sluice archive), in arrival order, instead of "
        "reading each stage's partition and offset back from the topics",
    )
    p.set_defaults(func=lambda args: cmd_parity(args, settings_of, reach))

    p = sub.add_parser("chaos", help="a live-rate stream through real workers under kills, rebalances, broker pauses and hostile input; audit every outcome")
    options.add_repo(p, service=False)  # the embedded broker only: it pauses the broker's process
    options.add_partitions(p)
    options.add_log_level(p)
    p.add_argument("--duration", type=float, default=150.0, help="seconds of stream at --rate (default 150); faults are spread over it")
    p.add_argument("--rate", type=float, default=1000.0, help="events per second (default 1000)")
    p.add_argument("--events", type=int, help="valid events to stream instead of --duration x --rate")
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs of the first worker, each followed by a restart (default 3)")
    p.add_argument("--rebalances", type=int, default=2, help="times a second worker joins and later leaves (default 2)")
    p.add_argument("--broker-pauses", type=int, default=1, help="times the broker is paused with SIGSTOP (default 1)")
    p.add_argument("--pause-s", type=float, default=3.0, help="length of each broker pause (default 3 s)")
    p.add_argument("--no-hostile", dest="hostile", action="store_false", help="leave out the hostile corpus")
    p.add_argument("--store", help=f"the workers' table store ({options.env_default('store')})")
    p.add_argument("--disorder-ms", type=int, default=60_000, help="arrival order differs from event time by up to this")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated stream and of the faults' timing (default 7)")
    p.set_defaults(func=lambda args: cmd_chaos(args, settings_of))
