"""`sluice deploy`: change what serves, as a record on the deployments topic.

    sluice deploy champion V [--fallback V2,rules] [--rules rules.json]
    sluice deploy shadow V [V ...]
    sluice deploy canary V --share 0.05 [--ramp 0.05,0.25,0.5,1 --step-after 5000|30s]
    sluice deploy ab V --split 0.5
    sluice deploy show | history [--json]
    sluice deploy champion V --explore 0.02 [--explore-config exploration.json]   # let 2% of blocks through
    sluice rollout                     # the controller that steps ramps and trips guardrails

Each command reads the current deployment, writes the next one (seq + 1)
with its reason, and returns; the workers load, verify and switch. The
fallback chain and business rules carry over from the current deployment
unless given again; so does exploration (`--explore 0` turns it off).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from features.errors import SluiceError
from stream.serving import explore
from stream.serving import rules as business
from stream.serving.deployment import Deployment, DeploymentError, Guardrails, first
from stream.serving.model import CHAMPION_FILE
from stream.serving.rollout import now_iso

#: `sluice rollout`'s health and metrics port (the worker's is 9464, the status page's 9465, the monitor's 9466).
ROLLOUT_PORT = 9467


def current(settings, records: list[Deployment] | None = None, registry=None) -> Deployment:
    """The deployment in force: the topic's newest record, else the model directory's champion."""
    if records is None:
        from stream.kafka.control import history
        from stream.kafka.topics import AppTopics

        records = history(settings.bootstrap_servers, AppTopics.named(settings).deployments, Deployment.from_json)
    if records:
        return max(records, key=lambda r: r.seq)
    from stream.registry import CHAMPION, LocalStore, open_registry

    registry = registry or open_registry(settings)
    if not isinstance(registry, LocalStore):
        return first(registry.resolve(CHAMPION))
    pointer = registry.root / CHAMPION_FILE
    if not pointer.exists():
        msg = f"no deployment record and no {pointer}: train a model first (`sluice train`)"
        raise SluiceError(msg)
    return first(pointer.read_text().strip())


def _check_versions(settings, versions) -> None:
    """Every version must be in the registry (the workers verify the files themselves before serving)."""
    from stream.registry import RegistryError, open_registry

    store = open_registry(settings)
    for version in versions:
        try:
            store.meta(version)
        except RegistryError as exc:
            msg = f"version {version} is not in the registry {settings.registry or settings.model_dir}: {exc}"
            raise DeploymentError(msg) from exc


def _step_after(text: str | None) -> tuple[int, float]:
    if not text:
        return 0, 0.0
    if text.endswith("s"):
        return 0, float(text[:-1])
    return int(text), 0.0


def next_deployment(current_: Deployment, args) -> Deployment:
    """The record `sluice deploy <action>` writes, from the one in force."""
    base = {
        "seq": current_.seq + 1, "at": now_iso(), "by": getattr(args, "by", None) or "sluice deploy",
        "fallback": current_.fallback, "rules": current_.rules, "guardrails": current_.guardrails,
    }
    if getattr(args, "fallback", None) is not None:
        base["fallback"] = tuple(v for v in args.fallback.split(",") if v)
    if getattr(args, "rules", None):
        base["rules"] = json.loads(Path(args.rules).read_text())
        business.check(base["rules"])
    base["exploration"] = exploration(current_.exploration, args, base["seq"])
    action = args.action
    reason = getattr(args, "reason", None)
    if action == "champion":
        return Deployment(champion=args.version, reason=reason or f"champion {args.version}", **base)
    if action == "shadow":
        return Deployment(champion=current_.champion, mode="shadow", challengers=tuple(args.versions),
                          reason=reason or f"shadow {', '.join(args.versions)}", **base)
    if action == "canary":
        ramp = tuple(float(x) for x in args.ramp.split(",")) if args.ramp else ()
        share = ramp[0] if ramp else args.share
        events, seconds = _step_after(args.step_after)
        rails = Guardrails(**{k: v for k, v in (("max_fallback_rate", args.max_fallback_rate),
                                                ("max_score_ms_p99", args.max_score_ms_p99),
                                                ("max_score_psi", args.max_score_psi),
                                                ("min_events", args.min_events)) if v is not None})
        base["guardrails"] = rails
        return Deployment(champion=current_.champion, mode="canary", challengers=(args.version,), share=share,
                          ramp=ramp, step_after_events=events, step_after_s=seconds,
                          reason=reason or f"canary {args.version} at {share:g}", **base)
    if action == "ab":
        return Deployment(champion=current_.champion, mode="ab", challengers=(args.version,), share=args.split,
                          reason=reason or f"A/B {current_.champion} vs {args.version}, split {args.split:g}", **base)
    msg = f"unknown deploy action {action}"
    raise DeploymentError(msg)


def exploration(current_: dict, args, seq: int) -> dict:
    """The exploration of the next record: the current one, its file (`--explore-config`), its share (`--explore`).

    The seed, unless the file names one, is the sequence number of the record
    that turned exploration on, so the events explored stay the same through
    later records that do not change it.
    """
    config = dict(current_)
    if getattr(args, "explore_config", None):
        config = json.loads(Path(args.explore_config).read_text())
    share = getattr(args, "explore", None)
    if share is not None:
        config["share"] = share
    if not explore.active(config):
        return {}
    config.setdefault("seed", current_.get("seed", seq))
    explore.check(config)
    return config


def cmd_deploy(args, settings) -> int:
    from stream.kafka.control import history, publish
    from stream.kafka.topics import AppTopics

    records = history(settings.bootstrap_servers, AppTopics.named(settings).deployments, Deployment.from_json)
    if args.action in ("show", "history"):
        shown = records if args.action == "history" else [current(settings, records)]
        for record in shown:
            if args.json:
                print(json.dumps(asdict(record)))
            else:
                print(describe(record))
        return 0
    now = current(settings, records)
    record = next_deployment(now, args)
    _check_versions(settings, (*record.versions, *record.fallback_versions))
    publish(settings.bootstrap_servers, AppTopics.named(settings).deployments, record)
    print(describe(record))
    return 0


def describe(record: Deployment) -> str:
    arms = f"champion {record.champion}"
    if record.mode == "shadow":
        arms += f", shadows {', '.join(record.challengers)}"
    elif record.mode == "canary":
        ramp = f" (ramp {', '.join(f'{s:g}' for s in record.ramp)}, step {record.step})" if record.ramp else ""
        arms += f", canary {record.challengers[0]} at {record.share:g}{ramp}"
    elif record.mode == "ab":
        arms += f", A/B arm B {record.challengers[0]} at {record.share:g}"
    chain = f"; fallback {' → '.join(record.fallback)}" if record.fallback else ""
    if explore.active(record.exploration):
        segment = record.exploration.get("segment")
        chain += f"; exploring {record.exploration.get('share', 0):g} of blocks" + (
            f" (by {segment['field']})" if segment else "")
    return f"#{record.seq} {record.at or '-'} {record.mode}: {arms}{chain} — {record.reason} [{record.by}]"


def add_parser(sub, on_deploy, on_rollout) -> None:
    from stream.cli import options

    p = sub.add_parser("deploy", help="change what serves: champion, shadow, canary, A/B; show and history")
    actions = p.add_subparsers(dest="action", required=True, help="run `sluice deploy ACTION --help` for one action")
    a = actions.add_parser("champion", help="serve V alone")
    a.add_argument("version", help="the model version to serve (it must be in the registry)")
    shadow = actions.add_parser("shadow", help="score every event with these challengers too; publish the champion's")
    shadow.add_argument("versions", nargs="+", help="the challenger versions to score in the shadow of the champion")
    canary = actions.add_parser("canary", help="send a stable share of entities to V")
    canary.add_argument("version", help="the canary's model version")
    canary.add_argument("--share", type=float, default=0.05, help="share of entities V scores (default 0.05)")
    canary.add_argument("--ramp", help="shares in order, e.g. 0.05,0.25,0.5,1 (needs --step-after)")
    canary.add_argument("--step-after", help="step when the arm has this many events (5000) or after this long (30s)")
    rails = Guardrails()
    canary.add_argument(
        "--max-fallback-rate", type=float,
        help=f"guardrail: roll back when more than this share of V's events fell back (default {rails.max_fallback_rate:g})",
    )
    canary.add_argument(
        "--max-score-ms-p99", type=float,
        help=f"guardrail: roll back when V's 99th percentile scoring time exceeds this (default {rails.max_score_ms_p99:g} ms)",
    )
    canary.add_argument(
        "--max-score-psi", type=float,
        help=f"guardrail: roll back when V's score PSI against its training reference exceeds this "
        f"(default {rails.max_score_psi:g})",
    )
    canary.add_argument(
        "--min-events", type=int,
        help=f"guardrails judge only after V has this many events (default {rails.min_events})",
    )
    ab = actions.add_parser("ab", help="split entities between the champion (A) and V (B)")
    ab.add_argument("version", help="arm B's model version")
    ab.add_argument("--split", type=float, default=0.5, help="arm B's share (default 0.5)")
    for q in (a, shadow, canary, ab):
        q.add_argument("--fallback", help="fallback chain: versions and/or `rules`, comma-separated (default: the current one's)")
        q.add_argument("--rules", help="business rules JSON file (see README; default: the current deployment's)")
        q.add_argument("--reason", help="why (recorded in the deployment history)")
        q.add_argument(
            "--explore", type=float, metavar="SHARE",
            help="let this share of would-be-blocked events through, logged with its propensity, so that blocking "
            "can be evaluated (0 = off; default: the current deployment's; see docs/lifecycle.md)",
        )
        q.add_argument("--explore-config", help="exploration JSON file: share, seed, per-segment shares")
    show = actions.add_parser("show", help="the deployment in force")
    history_ = actions.add_parser("history", help="every deployment record, oldest first")
    for q in (a, shadow, canary, ab, show, history_):
        options.add_broker(q, "required")
        options.add_model_dir(q)
        options.add_log_level(q)
        q.add_argument("--json", action="store_true", help="print JSON")
        q.set_defaults(func=on_deploy)

    r = sub.add_parser("rollout", help="the controller that steps canary ramps, trips guardrails and checks A/B ratios")
    options.add_broker(r, "required")
    options.add_repo(r)
    options.add_model_dir(r)
    options.add_partitions(r)
    options.add_log_level(r)
    r.add_argument(
        "--metrics-port", type=int, default=ROLLOUT_PORT,
        help=f"/metrics, /livez and /readyz, 0 = off (default {ROLLOUT_PORT}, not the worker's SLUICE_METRICS_PORT; "
        "address SLUICE_METRICS_HOST)",
    )
    r.set_defaults(func=on_rollout)
