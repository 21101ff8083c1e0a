"""`sluice models`: the versions in a model store, and moving the champion.

    sluice models list                       every version: created, AUC, threshold, aliases, status
    sluice models show V                     one version's metadata (V may be an alias: champion)
    sluice models diff V1 V2                 what differs: params, metrics, features, window, threshold
    sluice models promote V [--reason ...]   V becomes champion; the previous one is kept for rollback
    sluice models rollback [--reason ...]    the champion before the last promotion comes back
    sluice models retire V                   V can no longer be given an alias (not the champion)

Each takes `--registry` (a model directory, or mlflow:<tracking URI>; env
SLUICE_REGISTRY; default the model directory) and `--json`; show, promote
and rollback also `--bootstrap-servers`. The work is done by the plain functions
in stream.registry.manage; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json

from stream.cli import options
from stream.kafka.topics import AppTopics
from stream.registry import open_registry
from stream.registry import manage
from stream.settings import Settings

METRICS = ("auc", "log_loss", "brier", "precision", "recall", "alert_rate")
ROWS = ("train", "validation", "positives", "validation_positives")


def add_parser(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        help="model directory or mlflow:<tracking URI>, e.g. mlflow:sqlite:////abs/mlflow.db "
        f"({options.env_default('registry')}; default: the model directory, --model-dir)",
    )
    options.add_model_dir(common)
    common.add_argument("--name", help="registered model name (MLflow; default: the only Sluice model there)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = subparsers.add_parser("models", help="the model registry: list, show, diff, promote, rollback, retire")
    sub = p.add_subparsers(dest="models_command", required=True, help="run `sluice models ACTION --help` for one action")
    sub.add_parser("list", parents=[common], help="every version with its aliases and status").set_defaults(func=cmd_list)
    s = sub.add_parser("show", parents=[common], help="one version's metadata (a version id or an alias)")
    s.add_argument("version", help="a version id, or an alias such as champion")
    options.add_broker(
        s, "also the version's online evaluation per route, read from the labeled and prediction log topics there "
        f"({options.env_default('bootstrap_servers')})",
    )
    options.add_repo(s)
    s.set_defaults(func=_broker_checked(cmd_show))
    s = sub.add_parser("diff", parents=[common], help="what differs between two versions")
    s.add_argument("a", help="the first version (id or alias)")
    s.add_argument("b", help="the second version (id or alias)")
    s.set_defaults(func=cmd_diff)
    switch = (
        "also write the new champion to the deployments topic there, so the workers switch "
        f"({options.env_default('bootstrap_servers')})"
    )
    s = sub.add_parser("promote", parents=[common], help="make a version champion (rollback undoes it)")
    s.add_argument("version", help="the version to promote (id or alias)")
    s.add_argument("--reason", default="", help="recorded with the move")
    options.add_broker(s, switch)
    s.set_defaults(func=_broker_checked(cmd_promote))
    s = sub.add_parser("rollback", parents=[common], help="the champion before the last promotion serves again")
    s.add_argument("--reason", default="", help="recorded with the move")
    options.add_broker(s, switch)
    s.set_defaults(func=_broker_checked(cmd_rollback))
    s = sub.add_parser("retire", parents=[common], help="a version no alias may point at again (not the champion)")
    s.add_argument("version", help="the version to retire (id or alias)")
    s.add_argument("--reason", default="", help="recorded with the move")
    s.set_defaults(func=cmd_retire)


def _broker_checked(run):
    """`run(args)`, after checking (in one line, within seconds) that a broker given to it answers."""

    def checked(args) -> int:
        settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers)
        if settings.bootstrap_servers:
            from stream.kafka.reach import check_reachable

            check_reachable(settings)
        return run(args)

    return checked


def store_of(args):
    settings = Settings.from_env(model_dir=args.model_dir, registry=args.registry)
    return open_registry(settings, name=args.name)


def cmd_list(args) -> int:
    rows = manage.list_versions(store_of(args))
    if args.json:
        return _json(rows)
    if not rows:
        print("no versions; `sluice train` publishes one")
        return 0
    header = ("VERSION", "CREATED (UTC)", "AUC", "THRESHOLD", "ALIASES", "STATUS", "TRIGGER")
    table = [header] + [
        (r["version"], r["created_at"][:19].replace("T", " "), _num(r["auc"], 4), _num(r["threshold"], 4),
         ",".join(r["aliases"]) or "-", r["status"], r["trigger"] or "-")
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def cmd_show(args) -> int:
    meta = manage.show(store_of(args), args.version)
    online = _online(args, meta.get("version"))
    if online is not None:
        meta = dict(meta, online=online)
    if args.json:
        return _json(meta)
    window, rows, rule = meta.get("training_window") or {}, meta.get("rows") or {}, meta.get("threshold_rule") or {}
    metrics = meta.get("metrics") or {"auc": meta.get("validation_auc")}
    lines = [
        ("version", meta.get("version")),
        ("feature service", meta.get("feature_service")),
        ("aliases", ", ".join(meta["aliases"]) or "-"),
        ("status", meta["status"]),
        ("created", f"{meta.get('created_at') or meta.get('trained_at')} (trigger {meta.get('trigger') or '-'}, "
                    f"parent {meta.get('parent') or '-'}, seed {meta.get('seed', '-')})"),
        ("training window", f"{window.get('start')} .. {window.get('end')} (cutoff {window.get('cutoff')}, "
                            f"label maturity {_days(window.get('label_maturity_s'))}, validation from {window.get('validation_start')})"),
        ("rows", ", ".join(f"{k.replace('_', ' ')} {rows[k]:,}" for k in ROWS if k in rows) if isinstance(rows, dict) else rows),
        ("threshold", f"{_num(meta.get('threshold'), 6)}  {_rule(rule)}"),
        ("metrics", "  ".join(f"{k} {_num(metrics[k], 4)}" for k in METRICS if k in metrics) + "  (validation)"),
        ("params", ", ".join(f"{k}={v}" for k, v in sorted((meta.get("params") or {}).items()))),
        ("features", f"{len(meta.get('features') or [])} in vector order"),
        ("sha256", meta.get("sha256")),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")
    if meta.get("top_contributions"):
        print("top contributions (mean |TreeSHAP contribution| on up to 2,000 validation rows):")
        for name, value in meta["top_contributions"]:
            print(f"  {name:<48} {_num(value, 4)}")
    for route, windows in (online or {}).items():
        for kind in ("matured", "latest"):
            row = windows.get(kind)
            if row:
                realized = "  ".join(f"{k} {_num(v, 4)}" for k, v in (row.get("metrics") or {}).items())
                estimate = "  ".join(f"{k} {_num(v, 4)}" for k, v in (row.get("estimate") or {}).items())
                # Final or provisional as the worker's gauge and the status page say it (online_eval.window_final).
                state = f"provisional until {row.get('final_at')}" if row.get("provisional") else "final"
                print(f"online {route} ({kind}, {state}, window {row.get('window_start')} .. {row.get('window_end')}): "
                      f"{row.get('predictions')} predictions, coverage {_num(row.get('coverage'), 3)}; "
                      f"realized {realized or '-'}; estimated {estimate or '-'}")
    return 0


def _online(args, version: str | None):
    """Per route, the version's latest matured and latest window from the topics; None without a broker."""
    settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers, repo_path=args.repo_path,
                                 feature_service=args.feature_service)
    if not settings.bootstrap_servers or version is None:
        return None
    from features.feast_repo import load_plan, open_store as open_repo
    from stream.services.labels import online_metrics, version_summary

    from stream.lifecycle.label_config import JoinConfig

    plan = load_plan(open_repo(settings.repo_path), settings.feature_service)
    # The label window the worker's label join uses (the FeatureService's tags), not the tag's default:
    # with another, a window is final for the workers' gauges and provisional here, or the other way round.
    join = JoinConfig.from_tags(plan.tags, plan.schema.event_id)
    topics = AppTopics.named(settings)
    report = online_metrics(settings.bootstrap_servers, labeled_topic=topics.labeled,
                            prediction_log_topic=topics.prediction_log, id_field=join.id_field,
                            label_window_ms=join.window_ms)
    return version_summary(report, version)


def cmd_diff(args) -> int:
    result = manage.diff(store_of(args), args.a, args.b)
    if args.json:
        return _json(result)
    a, b, features = result["a"], result["b"], result["features"]
    changes = {k: v for k, v in result["changes"].items() if not k.startswith("threshold_rule.achieved")}
    if not changes and not any(features.values()):
        print(f"{a} and {b} do not differ in params, metrics, features, window or threshold")
        return 0
    width = max([len(k) for k in changes] + [len("key")])
    print(f"{'key'.ljust(width)}  {a:<28} {b}")
    for key, (va, vb) in changes.items():
        print(f"{key.ljust(width)}  {_cell(va):<28} {_cell(vb)}")
    if features["added"]:
        print(f"features only in {b}: {', '.join(features['added'])}")
    if features["removed"]:
        print(f"features only in {a}: {', '.join(features['removed'])}")
    if features["reordered"]:
        print("the features they share are in a different order")
    return 0


def cmd_promote(args) -> int:
    old, new = manage.promote(store_of(args), args.version, reason=args.reason)
    return _moved(args, "promote", old, new)


def cmd_rollback(args) -> int:
    old, new = manage.rollback(store_of(args), reason=args.reason)
    return _moved(args, "rollback", old, new)


def cmd_retire(args) -> int:
    version = manage.retire(store_of(args), args.version, reason=args.reason)
    if args.json:
        return _json({"action": "retire", "version": version})
    print(f"retired {version}: it keeps its files, and no alias can point at it again")
    return 0


def _moved(args, action: str, old, new) -> int:
    settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers, model_dir=args.model_dir)
    if settings.bootstrap_servers and old != new:
        record = _deploy_champion(settings, new, f"sluice models {action}: {args.reason or new}")
        print(f"deployment #{record.seq} written: the workers switch to {new} at their next micro-batch")
    if args.json:
        return _json({"action": action, "alias": "champion", "old": old, "new": new})
    if old == new:
        print(f"{new} is already champion; nothing changed")
    else:
        print(f"champion: {old or '(none)'} -> {new}")
    return 0


def _json(value) -> int:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))
    return 0


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cell(value) -> str:
    text = _num(value, 6) if isinstance(value, float) else json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _days(seconds) -> str:
    return "-" if seconds is None else f"{seconds / 86400:g} d"


def _rule(rule: dict) -> str:
    if not rule:
        return "(no rule recorded: best F1 on validation)"
    got = rule.get("achieved") or {}
    target = f"{rule['target']:.2%}" if rule.get("kind") == "alert_rate" else f"{rule.get('target')}"
    return (f"rule: {rule.get('kind')} target {target} on validation; achieved alert rate {_pct(got.get('alert_rate'))}, "
            f"precision {_num(got.get('precision'), 3)}, recall {_num(got.get('recall'), 3)} "
            f"({got.get('alerts', '-')} alerts in {got.get('rows', '-')} rows)")


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def _deploy_champion(settings, version: str, reason: str):
    """The registry's new champion, as a deployment record (fallback chain and rules carry over)."""
    from stream.cli.deploy import current
    from stream.kafka.control import publish
    from stream.serving.rollout import now_iso

    now = current(settings)
    record = now.but(seq=now.seq + 1, champion=version, mode="champion", challengers=(), share=0.0, ramp=(),
                     step=0, reason=reason, by="sluice models", at=now_iso())
    publish(settings.bootstrap_servers, AppTopics.named(settings).deployments, record)
    return record
