"""`sluice bench --batch-memory`: peak RSS of the out-of-core commands over a history and one 4x longer, side by side.

Bounded memory (docs/performance.md, *Batch scoring at scale*) means that a
history which grows in time at the same rate costs no more memory: both
histories hold the same events per entity per day (`write_history`, the
longer one over 4x the days), each command runs as the CLI runs it, in a
process of its own, with the same shard size, and its peak RSS (the
process's own `ru_maxrss`) is reported for both sizes and as their ratio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from stream.tools.bench.report import done, step

#: Events per entity per day of the histories: the documented runs' (5M events, 200,000 cards, 30 days).
RATE = 5_000_000 / 200_000 / 30
COMMANDS = ("backfill", "batch-score")

_MEASURE = """
import resource, sys
from stream.cli.main import main
code = main(sys.argv[1:])
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def add_arguments(p) -> None:
    p.add_argument("--batch-memory", action="store_true",
                   help="only the out-of-core commands' peak RSS over a history and one 4x longer at the same rate")
    p.add_argument("--batch-events", type=int, help="events of the shorter history (default 5,000,000; --quick 100,000)")
    p.add_argument("--batch-entities", type=int, help="entities per key of the histories (default 200,000; --quick 4,000)")
    p.add_argument("--batch-shard-rows", type=int, help="--shard-rows of every run (default 500,000; --quick 25,000)")
    p.add_argument("--batch-command", choices=[*COMMANDS, "both"], default="both", help="which command to measure (default both)")


def peak_kb(args: list[str], cwd: Path) -> tuple[int, float]:
    """(peak RSS in KiB, seconds) of `sluice ARGS` in a process of its own."""
    here = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    started = time.perf_counter()
    done_ = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, cwd=cwd, env=env, check=False)
    seconds = time.perf_counter() - started
    if done_.returncode != 0:
        msg = f"sluice {' '.join(args[:1])} failed during the memory bench: {done_.stderr[-2000:]}"
        raise RuntimeError(msg)
    return int(done_.stdout.split("PEAK_KB")[1].split()[0]), seconds


def side_by_side(plan, repo: Path, model_dir: Path, work: Path, events: int, *, entities: int, shard_rows: int,
                 commands=COMMANDS, seed: int = 1) -> dict:
    """Each command's peak RSS over `events` and over 4x `events` in 4x the time, and the ratio of the two."""
    from stream.tools.synthetic import write_history

    runs = []
    for n in (events, 4 * events):
        days = n / entities / RATE
        history = write_history(plan, work / f"history-{n}.parquet", n, entities=entities, days=days, seed=seed)
        for command in commands:
            extra = ["--model-dir", str(model_dir)] if command == "batch-score" else []
            t = step(f"{command}: {n:,} events over {days:.0f} days, --shard-rows {shard_rows:,}")
            kb, seconds = peak_kb([command, "--repo", str(repo), *extra, "--history", str(history),
                                   "--output", str(work / f"out-{command}-{n}"), "--shard-rows", str(shard_rows)], work)
            done(t, f"peak RSS {kb / 1024:,.0f} MB")
            runs.append({"command": command, "events": n, "days": round(days, 1), "peak_rss_mb": round(kb / 1024),
                         "seconds": round(seconds, 1)})
        history.unlink()
    growth = {}
    for command in commands:
        small, large = (r["peak_rss_mb"] for r in runs if r["command"] == command)
        growth[command] = round(large / small, 3)
    return {"shard_rows": shard_rows, "entities": entities, "events_per_entity_day": round(RATE, 3), "runs": runs,
            "peak_ratio_4x_history": growth}


def measure(args, workload, work: Path) -> dict:
    """`sluice bench --batch-memory`: prepare the workload's repo and a 30-tree model, then both histories."""
    from features.feast_repo import load_plan, open_store

    t = step(f"preparing {workload.name}: a repo and a 30-tree model")
    prepared = workload.prepare(work, entities=2_000, seed=args.seed, topic="bench-batch", trees=30)
    done(t)
    plan = load_plan(open_store(prepared.path))
    commands = COMMANDS if args.batch_command == "both" else (args.batch_command,)
    report = side_by_side(plan, prepared.path, prepared.model_dir, work, args.batch_events, entities=args.batch_entities,
                          shard_rows=args.batch_shard_rows, commands=commands)
    print_runs(report)
    return report


def print_runs(report: dict) -> None:
    print(f"\nPeak RSS, --shard-rows {report['shard_rows']:,}, {report['events_per_entity_day']} events per entity per day:")
    print(f"{'command':<12} {'events':>12} {'days':>6} {'peak RSS':>10} {'seconds':>8}")
    for r in report["runs"]:
        print(f"{r['command']:<12} {r['events']:>12,} {r['days']:>6} {r['peak_rss_mb']:>7,} MB {r['seconds']:>8}")
    for command, ratio in report["peak_ratio_4x_history"].items():
        print(f"{command}: 4x the history, {ratio:.2f}x the peak RSS")
