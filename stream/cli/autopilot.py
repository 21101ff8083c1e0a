"""`sluice autopilot` (continuous training, long-running, one per consumer group) and `sluice retrain` (one turn).

    sluice autopilot --bootstrap-servers B --repo R [--every 86400] [--min-new-labels 5000] ...
    sluice retrain   --bootstrap-servers B --repo R [--if-due] [--trigger manual]

`retrain` runs one turn of the same loop and exits, for a scheduler (cron, a
Kubernetes CronJob): with a candidate in shadow or canary it advances it (or
does nothing yet); otherwise it trains now (`--trigger`, default `manual`),
or only when a trigger fires with `--if-due`. It prints each record it wrote.
"""

from __future__ import annotations

import json
from dataclasses import asdict


def policy_of(args):
    from stream.lifecycle.autopilot import Policy
    from stream.lifecycle.experiments import Settings as Test

    return Policy(
        schedule_s=args.every, min_new_labels=args.min_new_labels or None, drift=not args.no_drift,
        max_auc_drop=args.max_auc_drop, gate_share=args.gate_share, gate_margin=args.gate_margin,
        gate_min_rows=args.gate_min_rows, experiment=Test(alpha=args.alpha, min_n=args.min_labeled),
        max_shadow_labeled=args.max_shadow_labeled, canary_share=args.canary_share, canary_events=args.canary_events,
        cooldown_s=args.cooldown,
    )


def _pilot(args, settings):
    from stream.services.autopilot import Autopilot

    return Autopilot(settings, policy=policy_of(args), history=not args.no_history, num_trees=args.trees, seed=args.seed)


def run_autopilot(args, settings) -> int:
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _pilot(args, settings) as pilot:
        try:
            pilot.run(stop, interval_s=args.interval)
        except KeyboardInterrupt:
            pass
    return 0


def run_retrain(args, settings) -> int:
    with _pilot(args, settings) as pilot:
        wrote = pilot.step(force_trigger=None if args.if_due else args.trigger)
    for record in wrote:
        print(json.dumps(asdict(record)) if args.json else f"#{record.seq} {record.reason}")
    if not wrote and not args.json:
        print("nothing to do: no trigger, a candidate still under experiment, or another writer acted first")
    return 0


def add_parsers(sub, settings_of) -> None:
    """`settings_of(args)` builds the Settings and checks that the broker answers."""
    from stream.cli import options
    from stream.lifecycle.autopilot import Policy
    from stream.lifecycle.experiments import ALPHA, MIN_N

    d = Policy()
    a = sub.add_parser("autopilot", help="continuous training: retrain on triggers, gate, shadow, canary, promote or roll back")
    r = sub.add_parser("retrain", help="one turn of the autopilot: train a candidate now (or advance the one under way)")
    r.add_argument("--if-due", action="store_true", help="train only when a trigger fires (schedule, drift, metric, labels)")
    r.add_argument("--trigger", default="manual", help="the trigger recorded with the candidate (default manual)")
    r.add_argument("--json", action="store_true", help="print the records written as JSON")
    a.add_argument("--interval", type=float, default=5.0, help="seconds between turns (default 5)")
    for p in (a, r):
        options.add_broker(p, "required")
        options.add_repo(p)
        options.add_model_dir(p)
        options.add_partitions(p)
        options.add_log_level(p)
        p.add_argument("--every", type=float, help="retrain when the last training is older than this many seconds")
        p.add_argument("--min-new-labels", type=int, default=d.min_new_labels,
                       help=f"retrain when this many mature labels arrived since the last training (0 = off; default {d.min_new_labels})")
        p.add_argument("--no-drift", action="store_true", help="do not retrain on the monitor's drift alerts")
        p.add_argument("--cooldown", type=float, default=d.cooldown_s,
                       help=f"no trigger fires within this many seconds of the last training (default {d.cooldown_s:g})")
        p.add_argument("--max-auc-drop", type=float, default=d.max_auc_drop,
                       help=f"retrain when the champion's AUC on recent mature rows is this far below its validation AUC (default {d.max_auc_drop})")
        p.add_argument("--gate-share", type=float, default=d.gate_share,
                       help=f"most recent share of mature labeled rows held out for the gate (default {d.gate_share})")
        p.add_argument("--gate-margin", type=float, default=d.gate_margin,
                       help="log loss per event the candidate may lose at the interval's lower end (default 0: not worse)")
        p.add_argument("--gate-min-rows", type=int, default=d.gate_min_rows, help=f"gate rows needed (default {d.gate_min_rows})")
        p.add_argument("--alpha", type=float, default=ALPHA, help=f"error rate of the gate and of the experiment (default {ALPHA})")
        p.add_argument("--min-labeled", type=int, default=MIN_N, help=f"no experiment verdict before this many labeled events (default {MIN_N})")
        p.add_argument("--max-shadow-labeled", type=int, default=d.max_shadow_labeled,
                       help=f"refuse a shadow candidate with no verdict after this many labeled events (default {d.max_shadow_labeled})")
        p.add_argument("--canary-share", type=float, default=d.canary_share, help=f"the canary's share (default {d.canary_share})")
        p.add_argument("--canary-events", type=int, default=d.canary_events,
                       help=f"canary events without a guardrail crossed before promotion (default {d.canary_events})")
        p.add_argument("--no-history", action="store_true", help="train on the labeled rows only, not also the repo's history")
        p.add_argument("--trees", type=int, default=100, help="boosting rounds of a candidate (default 100)")
        p.add_argument("--seed", type=int, default=7, help="LightGBM seed (default 7)")
    a.set_defaults(func=lambda args: run_autopilot(args, settings_of(args)))
    r.set_defaults(func=lambda args: run_retrain(args, settings_of(args)))
