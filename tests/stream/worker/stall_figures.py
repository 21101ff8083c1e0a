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
from pathlib import Path
from types import SimpleNamespace

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
    opts = SimpleNamespace(events=int(args.duration * args.rate), seed=args.seed, disorder_ms=10_000)
    faults = Faults(kills=args.kills, rebalances=args.rebalances, broker_pauses=args.broker_pauses)
    with EmbeddedBroker() as broker:
        prepared, payloads = _demo_stream(Settings.from_env(), work, opts, "stall")
        report = run_chaos(
            broker.bootstrap_servers, broker.pid, prepared.path, prepared.model_dir, payloads, [], work,
            rate=args.rate, faults=faults, seed=args.seed,
        )
    return {args.vary: on, "stall_s": report.stall_s, "longest_gap_s": round(report.longest_gap_s, 1),
            "faults": report.faults, "lost": report.line()["lost"],
            "feature_mismatches": report.line()["feature_mismatches"], "ok": report.ok, "work": str(work)}


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
