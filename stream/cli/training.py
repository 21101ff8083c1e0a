"""`sluice train`'s registry options: where the version goes, its threshold rule, seed, parent, trigger, alias."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI starts without importing training (pandas, Feast)
    from stream.lifecycle.train import TrainResult

DEFAULT_ALERT_RATE = 0.005


def add_arguments(p) -> None:
    p.add_argument(
        "--registry",
        help="model store to publish to: a model directory or mlflow:<tracking URI>, e.g. mlflow:sqlite:////abs/mlflow.db "
        "(env SLUICE_REGISTRY; default: the model directory)",
    )
    p.add_argument("--seed", type=int, default=7, help="LightGBM seed (recorded; same data + seed = same model.txt)")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument(
        "--alert-rate", type=float,
        help=f"threshold: alert on at most this share of validation rows (default {DEFAULT_ALERT_RATE})",
    )
    rule.add_argument("--precision", type=float, help="threshold: the lowest score cut with at least this precision on validation")
    p.add_argument("--parent", help="version this one was derived from (default: the champion at training time)")
    p.add_argument("--trigger", default="manual", help="why it was trained: manual, schedule, drift:<feature>, ... (recorded)")
    p.add_argument(
        "--alias", choices=["champion", "challenger", "none"], default="champion",
        help="what the new version becomes (default champion; `sluice models rollback` undoes it)",
    )


def options(args) -> dict:
    """Keyword arguments for stream.lifecycle.train.train from the parsed flags."""
    from stream.lifecycle.train import ThresholdRule

    if args.precision is not None:
        rule = ThresholdRule("precision", args.precision)
    else:
        rule = ThresholdRule("alert_rate", DEFAULT_ALERT_RATE if args.alert_rate is None else args.alert_rate)
    alias = None if args.alias == "none" else args.alias
    return {"seed": args.seed, "rule": rule, "parent": args.parent, "trigger": args.trigger, "alias": alias}


def summary(result: TrainResult) -> str:
    rule = result.meta.get("threshold_rule") or {}
    got = rule.get("achieved") or {}
    precision, recall = got.get("precision"), got.get("recall")
    return (
        f"trained {result.version}: {result.rows} rows ({result.positives} positive), "
        f"validation AUC {result.validation_auc:.4f}, threshold {result.threshold:.4f} "
        f"({rule.get('kind')} {rule.get('target')}: alert rate {got.get('alert_rate', 0):.2%}, "
        f"precision {'-' if precision is None else f'{precision:.2f}'}, recall {'-' if recall is None else f'{recall:.2f}'}), "
        f"{result.seconds:.1f} s -> {result.path}"
    )


def add_archive_argument(p, what: str) -> None:
    """--from-archive, for a command that computes windowed features from a history."""
    p.add_argument(
        "--from-archive", metavar="DIR",
        help=f"{what}, read from an events archive (`sluice archive --output`): features in the order events arrived, "
        "as the worker served them (default: the repo's history, in event-time order)",
    )


def order_line(order: str) -> str:
    """The line a command prints about the order its features were computed in."""
    from stream.lifecycle.archive_history import ARRIVAL_ARCHIVE, EVENT_TIME_NOTE

    if order.startswith(ARRIVAL_ARCHIVE):
        return f"features in arrival order ({order})"
    if order.startswith("served"):
        return f"features as served ({order})"
    return EVENT_TIME_NOTE
