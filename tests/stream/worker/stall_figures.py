"""Rebalance stalls with a setting on and off, side by side: `python -m tests.stream.worker.stall_figures`.

Runs `sluice chaos` (a join and a leave by default) alternately with
SLUICE_WARM_MOVES=1 and =0 (or, with `--vary standby`, SLUICE_STANDBY_REPLICAS=1
and =0, warm moves on) on one embedded broker per run, keeps each run's
worker logs (at info level, so the `sluice.rebalance` timeline is in them)
and prints, per run, the stall per fault kind and each worker's rebalance
timeline. docs/operations.md ("Rebalances") quotes its output.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import orjson

from stream.cli.checks import _demo_stream
from stream.kafka.broker import EmbeddedBroker
from stream.settings import Settings
from stream.tools.chaos import Faults, run_chaos

# Faust's log lines start "[date time,ms]"; the few logged before Faust sets up logging, "date time,ms".
TIMELINE = re.compile(r"^\[?(?P<at>[\d-]+ [\d:,]+)\]?.*?(?P<line>rebalance: .*)$")


def one_run(work: Path, on: bool, args) -> dict:
    if args.vary == "standby":
        os.environ["SLUICE_WARM_MOVES"] = "1"
        os.environ["SLUICE_STANDBY_REPLICAS"] = "1" if on else "0"
    else:
        os.environ["SLUICE_WARM_MOVES"] = "1" if on else "0"
    os.environ["SLUICE_LOG_LEVEL"] = "info"
    work.mkdir(parents=True, exist_ok=True)
    opts = SimpleNamespace(
        events=int(args.duration * args.rate), seed=args.seed, disorder_ms=60_000 if args.like_chaos else 10_000,
    )
    faults = Faults(kills=args.kills, rebalances=args.rebalances, broker_pauses=args.broker_pauses)
    with EmbeddedBroker(log_path=work / "broker.log") as broker:
        prepared, payloads = _demo_stream(Settings.from_env(), work, opts, "stall")
        hostile = _hostile(prepared.path, payloads, args.seed) if args.like_chaos else []
        app_id = f"chaos-{time.time_ns() // 1_000_000}"
        report = run_chaos(
            broker.bootstrap_servers, broker.pid, prepared.path, prepared.model_dir, payloads, hostile, work,
            rate=args.rate, faults=faults, seed=args.seed, app_id=app_id,
        )
        big = _big_messages(broker.bootstrap_servers, prepared.path, app_id) if hostile else []
        without = []
        if args.dump:
            _dump(broker.bootstrap_servers, prepared.path, app_id, work / "outcomes.json")
            without = without_outcome(work / "outcomes.json")
    return {args.vary: on, "stall_s": report.stall_s, "longest_gap_s": round(report.longest_gap_s, 1),
            "faults": report.faults, "lost": report.line()["lost"],
            "feature_mismatches": report.line()["feature_mismatches"], "late": report.late, "ok": report.ok, "work": str(work),
            "big_messages": big, "examples": [str(e)[:300] for e in report.examples], "without_outcome": without}


def _hostile(repo_path: Path, payloads: list[bytes], seed: int) -> list[tuple[int, bytes | None, bytes | None]]:
    """The hostile corpus as `sluice chaos` places it."""
    from features.feast_repo import load_plan, open_store
    from stream.tools.hostile import spread_corpus

    plan = load_plan(open_store(repo_path))
    return [(at, m.key, m.value) for at, m in spread_corpus(plan.schema, plan.partition_key, payloads, seed=seed)]


def _big_messages(bootstrap: str, repo_path: Path, app_id: str, min_bytes: int = 100_000) -> list[dict]:
    """The events over `min_bytes` (the hostile corpus's two of about 1 MB): where and when they were written and
    when their dead letter was (broker times, epoch ms)."""
    from features.feast_repo import load_plan, open_store
    from stream.kafka.reader import read_topic
    from stream.pipeline.outcomes import HEADER_SOURCE
    from stream.tools.process import run_topics

    topics = run_topics(load_plan(open_store(repo_path)), app_id)
    big = {}
    for m in read_topic(bootstrap, topics.events, idle_s=5, timeout_s=300):
        size = len(m.key() or b"") + len(m.value() or b"")
        if size >= min_bytes:
            big[(m.partition(), m.offset())] = {"partition": m.partition(), "offset": m.offset(), "bytes": size,
                                                "written_ms": m.timestamp()[1], "dead_letter_ms": None}
    for m in read_topic(bootstrap, topics.dlq, idle_s=5, timeout_s=300):
        for name, value in m.headers() or ():
            if name == HEADER_SOURCE:
                topic, p, o = value.decode().rsplit("/", 2)
                if topic == topics.events and (int(p), int(o)) in big:
                    big[(int(p), int(o))]["dead_letter_ms"] = m.timestamp()[1]
    return list(big.values())


def _dump(bootstrap: str, repo_path: Path, app_id: str, path: Path) -> None:
    """Per events partition, the broker times of its records and of their outcomes, for reading one gap closely."""
    from features.feast_repo import load_plan, open_store
    from stream.kafka.reader import read_topic
    from stream.pipeline.outcomes import HEADER_SOURCE
    from stream.tools.process import run_topics

    topics = run_topics(load_plan(open_store(repo_path)), app_id)
    out: dict = {"events": [], "predicted": [], "late": [], "dlq": []}
    for m in read_topic(bootstrap, topics.events, idle_s=5, timeout_s=300):
        out["events"].append([m.partition(), m.offset(), m.timestamp()[1], len(m.value() or b""), (m.key() or b"")[:12].hex()])
    for m in read_topic(bootstrap, topics.prediction_log, idle_s=5, timeout_s=300):
        p, o = orjson.loads(m.value())["arrival"][0]
        out["predicted"].append([p, o, m.timestamp()[1]])
    for name in ("late", "dlq"):
        for m in read_topic(bootstrap, getattr(topics, name), idle_s=5, timeout_s=300):
            source = dict(m.headers() or ()).get(HEADER_SOURCE, b"").decode()
            out[name].append([source, m.timestamp()[1]])
    path.write_bytes(orjson.dumps(out))


def without_outcome(path: Path) -> list[dict]:
    """From a `--dump`: the runs of consecutive events offsets with no outcome at all (no prediction, late record or
    dead letter), per partition, with the broker times of their first and last record (epoch ms): where a lost
    event went missing, to read against the workers' logs."""
    from stream.pipeline.clock import TICK_KEY

    out = orjson.loads(path.read_bytes())
    done = {(p, o) for p, o, _ in out["predicted"]}
    for name in ("late", "dlq"):
        for source, _ in out[name]:
            parts = source.rsplit("/", 2)
            if len(parts) == 3 and "repartition" not in parts[0]:  # (a later stage's: not an events position)
                done.add((int(parts[1]), int(parts[2])))
    runs: list[dict] = []
    for p, o, written_ms, _, key in sorted(out["events"]):
        if (p, o) in done or key == TICK_KEY.hex():  # a tick (stream.worker.ticks) has no outcome
            continue
        last = runs[-1] if runs else None
        if last and last["partition"] == p and last["to"] == o - 1:
            last.update(to=o, count=last["count"] + 1, last_written_ms=written_ms)
        else:
            runs.append({"partition": p, "from": o, "to": o, "count": 1, "first_written_ms": written_ms,
                         "last_written_ms": written_ms})
    return runs


def timelines(work: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in sorted(work.glob("worker-*.log")):
        lines = []
        for raw in path.read_text(errors="replace").splitlines():
            m = TIMELINE.match(raw)
            if m:
                lines.append(f"{m['at'][11:]} {m['line']}")
        out[path.stem] = lines
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2, help="runs per setting (alternating)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--kills", type=int, default=0)
    parser.add_argument("--rebalances", type=int, default=1)
    parser.add_argument("--broker-pauses", type=int, default=0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--vary", choices=["warm", "standby"], default="warm",
                        help="the setting turned on and off: warm moves, or standby copies (warm moves on)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sluice-stall-figures"))
    parser.add_argument("--like-chaos", action="store_true",
                        help="what the default `sluice chaos` adds: the hostile corpus and 60 s of disorder (10 s without)")
    parser.add_argument("--dump", action="store_true", help=(
        "keep every record's broker time in <work>/outcomes.json; the result's without_outcome lists the runs of events "
        "offsets with no outcome (where lost events went missing)"))
    parser.add_argument("--only", choices=["warm", "cold"], help="only this setting (warm: on, cold: off)")
    args = parser.parse_args()
    settings = [True, False] if args.only is None else [args.only == "warm"]
    for i in range(args.runs):
        for on in settings:
            work = args.work / f"{args.vary}-{'on' if on else 'off'}-{i}"
            result = one_run(work, on, args)
            print(json.dumps(result), flush=True)
            for worker, lines in timelines(work).items():
                print(f"  {worker}")
                for line in lines:
                    print(f"    {line}")
            print(flush=True)


if __name__ == "__main__":
    main()
