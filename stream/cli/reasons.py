"""`sluice reasons`: reason codes from the prediction log, off the scoring path (stream/services/reasons.py)."""

from __future__ import annotations

from stream.cli import options

DEFAULT_PORT = 9469


def add_parser(subparsers, settings_of) -> None:
    """`settings_of(args)` builds the Settings and checks that the broker answers."""
    p = subparsers.add_parser(
        "reasons",
        help="explain a consumer group's positive decisions from its prediction log, onto the reasons topic",
        description=(
            "Read prediction_log in its own consumer group (<app id>-reasons), compute the top SLUICE_REASON_K "
            "contributions (TreeSHAP, or path attribution with SLUICE_REASON_METHOD=path) of every positive decision "
            "and a stable sample of the rest (SLUICE_REASON_SHARE) from the exact logged vector, write them to the "
            "reasons topic keyed by event id (SLUICE_REASONS_TOPIC), and commit once they are delivered. The workers "
            "then compute none in their scoring batch (SLUICE_REASONS=service, the default). Topics, registry and "
            "Kafka security come from the same SLUICE_* settings as the worker's."
        ),
    )
    options.add_group_service(p, "reasons", DEFAULT_PORT)
    p.set_defaults(func=lambda args: run(settings_of(args)))


def run(settings) -> int:
    from features.feast_repo import load_plan, open_store
    from stream.services.reasons import run_reasons

    plan = load_plan(open_store(settings.repo_path), settings.feature_service)
    run_reasons(settings, plan.schema.event_id)
    return 0
