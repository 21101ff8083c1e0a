"""The `sluice` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from features.errors import SluiceError
from stream.cli import archive as archive_cmd
from stream.cli import autopilot as autopilot_cmd
from stream.cli import batch as batch_cmd
from stream.cli import checks as checks_cmd
from stream.cli import deploy as deploy_cmd
from stream.cli import experiment as experiment_cmd
from stream.cli import examples, materialize, options, quiet, ui
from stream.cli import init as init_cmd
from stream.cli import send as send_cmd
from stream.cli import skew as skew_cmd
from stream.cli import up as up_cmd
from stream.cli import models as models_cmd
from stream.cli import training as training_cmd
from stream.cli import label_join as label_join_cmd
from stream.cli import labels as labels_cmd
from stream.cli import monitor as monitor_cmd
from stream.cli import offline as offline_cmd
from stream.cli import reasons as reasons_cmd
from stream.settings import Settings


_common = options.add_common


_settings = options.settings_of


def _reach(settings: Settings) -> Settings:
    """Fail in one line within seconds when the command's broker does not answer (before any other client starts).

    From here on every Kafka client of the process takes its security
    settings from `settings`, read once, not from the environment again.
    """
    from stream.kafka.clients import configure

    configure(settings)
    if settings.bootstrap_servers is not None:
        from stream.kafka.reach import check_reachable

        check_reachable(settings)
    return settings


def _given_broker(run):
    """`run(args)`, after checking the broker when --bootstrap-servers names one."""

    def checked(args) -> int:
        # The flag only: a command wrapped here does not read SLUICE_BOOTSTRAP_SERVERS.
        _reach(Settings.from_env().with_(bootstrap_servers=args.bootstrap_servers))
        return run(args)

    return checked


def cmd_broker(args) -> int:
    from stream.kafka.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port).start()
    print(f"broker ready: {broker.bootstrap_servers}  (Ctrl-C stops it)", flush=True)
    stop = []
    # Explicit handlers: a process started in the background by a
    # non-interactive shell inherits SIGINT as ignored, and Ctrl-C (or
    # `kill -INT`) must stop the broker all the same.
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while not stop and broker.running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
        print("broker stopped", flush=True)
    return 0


def cmd_worker(args) -> int:
    from stream.serving.model import start_checker

    start_checker()  # the model check's child imports LightGBM meanwhile
    settings = _reach(_settings(args))  # before importing the worker (seconds of Faust and Feast)
    from stream.feast.unchecked import import_feast_unchecked

    import_feast_unchecked()
    from stream.worker.app import run_worker

    if settings.bootstrap_servers is None:
        from stream.kafka.broker import EmbeddedBroker

        with EmbeddedBroker() as broker:
            print(f"embedded broker: {broker.bootstrap_servers}", flush=True)
            run_worker(settings.with_(bootstrap_servers=broker.bootstrap_servers))
        return 0
    run_worker(settings)
    return 0


def cmd_serve(args) -> int:
    """`sluice worker` with request/response on: the answers come from the worker's own window state."""
    if not args.serve_port and not os.environ.get("SLUICE_SERVE_PORT"):
        args.serve_port = 8080
    return cmd_worker(args)


def cmd_train(args) -> int:
    from stream.lifecycle.train import train
    from stream.registry import registry_location

    settings = _settings(args)
    if args.from_labeled and args.from_archive:
        msg = "--from-labeled trains on the served vectors, --from-archive recomputes them from the events: pass one"
        raise SluiceError(msg)
    if args.from_labeled:
        return labels_cmd.train(args, _reach(settings))
    frame = None
    if batch_cmd.out_of_core(args) and args.from_archive:
        raise SluiceError("--from-archive is computed in memory: leave out --shards/--shard-rows/--ray")
    if batch_cmd.out_of_core(args):
        from stream.lifecycle.train import training_frame

        labels = Path(args.labels) if args.labels else None
        frame = training_frame(Path(settings.repo_path), settings.feature_service, labels, args.label_column,
                               features=batch_cmd.training_features(args, settings))
    result = train(
        settings.repo_path,
        registry_location(settings),
        service=settings.feature_service,
        labels_path=args.labels,
        label_column=args.label_column,
        num_trees=args.trees,
        archive=args.from_archive,
        frame=frame,
        **training_cmd.options(args),
    )
    print(training_cmd.summary(result))
    print(training_cmd.order_line(result.meta.get("feature_order", "")))
    return 0


def _broker_settings(args) -> Settings:
    settings = _settings(args)
    if settings.bootstrap_servers is None:
        msg = f"`sluice {args.command}` talks to the workers' broker: pass --bootstrap-servers (or SLUICE_BOOTSTRAP_SERVERS)"
        raise SluiceError(msg)
    return _reach(settings)


def cmd_deploy(args) -> int:
    from stream.cli import deploy

    return deploy.cmd_deploy(args, _broker_settings(args))


def cmd_rollout(args) -> int:
    from features.feast_repo import load_plan, open_store
    from stream.cli.deploy import current
    from stream.registry import open_registry
    from stream.services.rollout import run_rollout

    settings = _broker_settings(args)
    registry = open_registry(settings)
    plan = load_plan(open_store(settings.repo_path), settings.feature_service)
    run_rollout(settings, plan.partition_key, current(settings, registry=registry).champion, registry=registry)
    return 0


def cmd_demo(args) -> int:
    _reach(_settings(args))
    from fraud_demo.run import run_demo

    if getattr(args, "rollout", False):
        from fraud_demo.rollout import run_rollout_demo

        return run_rollout_demo(_settings(args), events=args.events, rate=args.rate, seed=args.seed)
    if args.labels:
        from fraud_demo.labels import run_label_demo

        return run_label_demo(_settings(args), events=args.events, rate=args.rate, seed=args.seed, explore=args.explore)
    if getattr(args, "loop", False):
        # Faust, when first imported, takes `--loop <name>` from sys.argv as its event-loop option: ours is a flag.
        sys.argv = [a for a in sys.argv if a != "--loop"]
        from fraud_demo.loop import run_loop_demo

        return run_loop_demo(_settings(args), events=args.events, rate=args.rate, seed=args.seed)
    if args.drift:
        from fraud_demo.drift import run_drift_demo

        return run_drift_demo(_settings(args), events=args.events, rate=args.rate, seed=args.seed)
    return run_demo(_settings(args), events=args.events, duration_s=args.duration, rate=args.rate, seed=args.seed)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sluice")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


#: The worker's --max-event-ahead-ms: what it guards, what happens beyond it, how to choose it.
MAX_EVENT_AHEAD_HELP = (
    "how far an event's own time may run ahead of its Kafka timestamp, in ms "
    f"({options.env_default('max_event_ahead_ms')}, {options.DEFAULTS.max_event_ahead_ms / 3_600_000:g} h). It guards the windows against a producer with a wrong "
    "clock: an accepted event far in the future moves its partition's stream time forward, so later on-time events "
    "fall behind it by more than the allowed lateness (the KafkaSource's watermark_delay_threshold) and go to "
    "<topic>.late. An event beyond the limit is dead-lettered to <topic>.dlq with reason future_time and enters no "
    "window. Choose at "
    "least the producers' clock skew plus the largest lead a valid event time can have over the time it is produced "
    "(scheduled or post-dated events); larger lets a bad clock push stream time further ahead, smaller dead-letters "
    "valid events"
)


def build_parser() -> argparse.ArgumentParser:
    # Over 60 lines on purpose: the parser is the CLI's table of contents, one block
    # per command, kept together.
    from stream.tools.bench import main as bench_cmd

    parser = argparse.ArgumentParser(prog="sluice", description="Streaming features and predictions with exact training/serving parity.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, help="run `sluice COMMAND --help` for one command")

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker until Ctrl-C")
    p.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("worker", help="run the streaming worker (Faust)")
    _common(p)
    p.add_argument(
        "--store", help=f"Faust table store: rocksdb:// (state on disk, restarts read only what changed) or memory:// "
        f"(re-reads the whole changelog on restart) ({options.env_default('store')})",
    )
    p.add_argument("--metrics-port", type=int, help=f"Prometheus port, 0 = off ({options.env_default('metrics_port')})")
    p.add_argument("--warm-state", help=f"start windows from this `sluice warm` output ({options.env_default('warm_state')})")
    p.add_argument("--max-event-ahead-ms", type=int, metavar="MS", help=MAX_EVENT_AHEAD_HELP)
    p.add_argument(
        "--serve-port", type=int, metavar="PORT",
        help=f"answer POST /score and GET /features/ENTITY on this port, 0 = off ({options.env_default('serve_port')})",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("serve", help="a worker that also answers POST /score and GET /features/ENTITY (docs/serving.md)")
    _common(p)
    p.add_argument("--store", help=f"Faust table store ({options.env_default('store')})")
    p.add_argument("--metrics-port", type=int, help=f"Prometheus port, 0 = off ({options.env_default('metrics_port')})")
    p.add_argument("--serve-port", type=int, metavar="PORT", default=None, help="HTTP port of /score (default 8080)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("warm", help="window state at the end of a history, for a worker to start from (--warm-state)")
    options.add_repo(p)
    options.add_log_level(p)
    p.add_argument("--history", help="events parquet (default: the stream view's batch source)")
    p.add_argument("--output", required=True, help="parquet file to write")
    p.set_defaults(func=offline_cmd.warm)

    p = sub.add_parser("train", help="build point-in-time-correct training data and train LightGBM")
    options.add_repo(p)
    options.add_model_dir(p)
    options.add_broker(
        p, "only with --from-labeled: the broker whose prediction log the skew check reads "
        f"({options.env_default('bootstrap_servers')}); training itself needs no broker",
    )
    options.add_log_level(p)
    p.add_argument("--labels", help="labels parquet (default: the FeatureService tag sluice.labels_path)")
    p.add_argument("--label-column", help="label column (default: tag sluice.label_column)")
    p.add_argument("--trees", type=int, default=200, help="boosting rounds (LightGBM trees; default 200)")
    training_cmd.add_arguments(p)
    labels_cmd.add_train_argument(p)
    training_cmd.add_archive_argument(p, "train on what arrived on the events topic")
    batch_cmd.add_scale_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="card-fraud demo: broker, feature repo, training, worker, live events, summary")
    options.add_broker(p, "embedded")
    options.add_repo(p, service=False)
    options.add_model_dir(p)
    options.add_partitions(p)
    options.add_log_level(p)
    p.add_argument("--events", type=int, default=None, help="live events to stream (default 20000)")
    p.add_argument("--duration", type=float, default=None, help="stream for this many seconds instead")
    p.add_argument("--rate", type=float, default=2000.0, help="live events per second (0 = as fast as possible; default 2000)")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated cards, merchants and transactions (default 7)")
    p.add_argument(
        "--labels", action="store_true",
        help="label scenario: transactions, then chargebacks minutes to weeks late (duplicated, reversed, unknown), "
        "joined to what was served; ends with the join's counts, online vs offline AUC and the skew",
    )
    p.add_argument(
        "--explore", type=float, default=0.0, metavar="SHARE",
        help="with --labels: serve exploring this share of would-be blocks, send no chargeback for a blocked "
        "transaction, and end with true, naive and IPW precision and recall of the blocking decisions",
    )
    p.add_argument(
        "--drift", action="store_true",
        help="drift scenario: --events (default 200000) from the training distribution, then a concept-drift switch; "
        "false alarms and detection delay counted from the monitoring topic",
    )
    p.add_argument(
        "--loop", action="store_true",
        help="continuous-training scenario: drift, alert, labels, the online metric falls, the autopilot retrains, "
        "shadows, canaries and promotes; ends with every number read back from the topics (--events caps the stream)",
    )
    p.add_argument(
        "--rollout", action="store_true",
        help="rollout scenario: two versions; shadow, canary with a ramp, promote, roll back while events stream "
        "(default 30000 events); ends with predictions by version and route, read back from the topics",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("backfill", help="offline features, exactly as the worker computes them, for a history or given rows")
    options.add_repo(p)
    options.add_log_level(p)
    history = p.add_mutually_exclusive_group()
    history.add_argument("--history", help="events parquet (default: the stream view's batch source)")
    training_cmd.add_archive_argument(history, "the events")
    p.add_argument("--rows", help="parquet of (entity keys, time) rows to evaluate instead of every event")
    p.add_argument("--timestamp-column", help="time column of --rows (default: the stream's timestamp field)")
    p.add_argument("--output", required=True, help="parquet file to write")
    p.add_argument(
        "--to-feast",
        action="store_true",
        help="also register the output as offline feature views '<view>_backfill' so get_historical_features returns it",
    )
    batch_cmd.add_scale_arguments(p)
    p.set_defaults(func=offline_cmd.backfill)
    batch_cmd.add_parser(sub, _settings, _reach)

    checks_cmd.add_parsers(sub, _settings, _reach)
    deploy_cmd.add_parser(sub, cmd_deploy, cmd_rollout)
    bench_cmd.add_parser(sub, checks_cmd.demo_workload)
    sub.choices["bench"].set_defaults(func=_given_broker(sub.choices["bench"].get_default("func")))
    materialize.add_parser(sub)
    monitor_cmd.add_parser(sub, _settings)
    reasons_cmd.add_parser(sub, _broker_settings)
    labels_cmd.add_sink_parser(sub, _broker_settings)
    label_join_cmd.add_parser(sub, _broker_settings)
    archive_cmd.add_parser(sub, _broker_settings)
    skew_cmd.add_parser(sub, _broker_settings)
    experiment_cmd.add_parser(sub, _broker_settings)
    autopilot_cmd.add_parsers(sub, _broker_settings)
    ui.add_parser(sub)
    models_cmd.add_parser(sub)
    init_cmd.add_parser(sub)
    send_cmd.add_parser(sub)
    up_cmd.add_parser(sub)
    examples.apply(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet.install()
    args = build_parser().parse_args(argv)
    os.environ.setdefault("FEAST_USAGE", "False")
    try:
        level = options.log_level(_settings(args).log_level)
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return int(args.func(args) or 0)
    except SluiceError as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
