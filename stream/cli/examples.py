"""One example per command, shown at the end of its --help; kept together so that every command has one.

`apply(parser)` walks the parser tree and gives each (sub)command its
example as the epilog; tests/stream/cli/test_help.py fails for a command
without one.
"""

from __future__ import annotations

import argparse
import textwrap

_V1, _V2 = "v20261101-120000-3f2a9c1d", "v20261108-120000-8b04e7aa"
_KAFKA = "--bootstrap-servers kafka:9092"

#: "command [subcommand]" -> one command line that works as written (given a broker, a repo, models).
EXAMPLES = {
    "": "sluice demo --events 20000",
    "broker": "sluice broker --port 9092",
    "init": "sluice init my_repo --topic purchases",
    "send": f"sluice send purchases.jsonl {_KAFKA} --repo my_repo --rate 500",
    "up": "sluice up --repo my_repo",
    "worker": f"sluice worker {_KAFKA} --repo feature_repo --model-dir .sluice/models --max-event-ahead-ms 900000",
    "serve": f"sluice serve {_KAFKA} --repo feature_repo --serve-port 8080   # then: curl localhost:8080/score -d @event.json",
    "warm": "sluice warm --repo feature_repo --output .sluice/warm.parquet   # then: sluice worker --warm-state .sluice/warm.parquet",
    "train": "sluice train --repo feature_repo --model-dir .sluice/models --trees 200 --alert-rate 0.005",
    "demo": "sluice demo --events 20000 --rate 2000",
    "backfill": "sluice backfill --repo feature_repo --output .sluice/features.parquet --to-feast",
    "batch-score": "sluice batch-score --repo feature_repo --model-dir .sluice/models --history events.parquet --output .sluice/scored --ray",
    "parity": "sluice parity --events 20000 --partitions 4 --kill-at 0.5",
    "chaos": "sluice chaos --events 20000 --kills 1 --rebalances 1 --broker-pauses 1",
    "deploy": f"sluice deploy canary {_V2} --share 0.05 {_KAFKA}",
    "deploy champion": f"sluice deploy champion {_V2} --fallback {_V1},rules --reason 'retrained on November' {_KAFKA}",
    "deploy shadow": f"sluice deploy shadow {_V2} {_KAFKA}",
    "deploy canary": f"sluice deploy canary {_V2} --ramp 0.05,0.25,0.5,1 --step-after 5000 --max-fallback-rate 0.01 {_KAFKA}",
    "deploy ab": f"sluice deploy ab {_V2} --split 0.5 {_KAFKA}",
    "deploy show": f"sluice deploy show {_KAFKA}",
    "deploy history": f"sluice deploy history --json {_KAFKA}",
    "rollout": f"sluice rollout {_KAFKA} --repo feature_repo --log-level info",
    "autopilot": f"sluice autopilot {_KAFKA} --repo feature_repo --every 86400 --min-new-labels 5000 --log-level info",
    "retrain": f"sluice retrain {_KAFKA} --repo feature_repo --if-due",
    "bench": "sluice bench --quick",
    "materialize": "sluice materialize --repo feature_repo 2026-11-01 2026-11-08",
    "archive": f"sluice archive {_KAFKA} --repo feature_repo --output archive/",
    "skew": f"sluice skew {_KAFKA} --repo feature_repo --archive archive/ --since 2026-11-01T00:00:00Z",
    "monitor": f"sluice monitor {_KAFKA} --repo feature_repo --model-dir .sluice/models --metrics-port 9466",
    "reasons": f"sluice reasons {_KAFKA} --repo feature_repo --model-dir .sluice/models --metrics-port 9469",
    "label-join": f"sluice label-join {_KAFKA} --repo feature_repo --metrics-port 9470   # the workers: SLUICE_LABEL_JOIN=service",
    "experiment": f"sluice experiment report {_KAFKA} --repo feature_repo",
    "experiment report": f"sluice experiment report {_KAFKA} --repo feature_repo --json",
    "labeled-sink": f"sluice labeled-sink {_KAFKA} --output .sluice/labeled",
    "ui": f"sluice ui {_KAFKA} --metrics-url http://127.0.0.1:9464/metrics",
    "models": "sluice models list --model-dir .sluice/models",
    "models list": "sluice models list --model-dir .sluice/models --json",
    "models show": f"sluice models show champion --model-dir .sluice/models {_KAFKA}",
    "models diff": f"sluice models diff {_V1} {_V2}",
    "models promote": f"sluice models promote {_V2} --reason 'AUC 0.91 vs 0.89 on November' {_KAFKA}",
    "models rollback": f"sluice models rollback --reason 'alert rate doubled' {_KAFKA}",
    "models retire": f"sluice models retire {_V1} --reason 'trained on a broken label feed'",
}


def subcommands(parser: argparse.ArgumentParser, path: str = ""):
    """(path, parser) of `parser` and every subcommand under it, depth first."""
    yield path, parser
    for action in parser._actions:  # argparse keeps no public list of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, f"{path} {name}".strip())


def apply(parser: argparse.ArgumentParser) -> None:
    """Each command's example as its epilog, its description wrapped (the raw formatter keeps line breaks as written)."""
    for path, p in subcommands(parser):
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        if p.description:
            p.description = textwrap.fill(" ".join(p.description.split()), 79)
        if path in EXAMPLES:
            p.epilog = f"example:\n  {EXAMPLES[path]}"
