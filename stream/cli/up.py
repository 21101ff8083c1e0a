"""`sluice up`: a local stack that stays up until Ctrl-C.

The embedded broker, one worker, the label join (`sluice label-join`, off the
scoring path), the monitor, the reasons service and the status page, over your repo and model, or over a starter repo (`sluice
init`'s) made, applied and trained on first use. It prints the URLs and the exact commands to use
against the stack, watches its processes, and stops all of them on Ctrl-C or
SIGTERM, or when one of them dies (naming it and its log).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
import urllib.request
from pathlib import Path

from features.errors import SluiceError
from stream.tools.process import WorkerProcess, label_join_process, monitor_process, reasons_process, worker_process

#: How long each process may take to become ready.
READY_TIMEOUT_S = 120.0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "up",
        help="a local stack that stays up: embedded broker, worker, label join, monitor, reasons and status page (Ctrl-C stops all)",
        description=(
            "Start the embedded broker, a worker, a join worker (labels joined to the prediction log), the monitor, "
            "the reasons service and the status page, print their addresses and the "
            "commands to use against them, and keep them running until Ctrl-C. Without --repo, a starter repo "
            "(see `sluice init`) is written, applied and trained in --dir on first use."
        ),
    )
    p.add_argument("--repo", dest="repo_path", help="an applied Feast repo (default: a starter repo in --dir)")
    p.add_argument("--model-dir", help="its trained models (default: <dir>/models, trained on first use)")
    p.add_argument("--dir", default=".sluice/up", help="where the stack keeps its data and logs (default .sluice/up)")
    p.add_argument("--port", type=int, default=0, help="broker port on 127.0.0.1 (default: a free one)")
    p.add_argument("--app-id", default="sluice-up", help="consumer group of the worker and monitor (default sluice-up)")
    p.add_argument("--metrics-port", type=int, default=9464, help="the worker's /metrics, /readyz (default 9464)")
    p.add_argument("--monitor-port", type=int, default=9466, help="the monitor's /metrics (default 9466)")
    p.add_argument("--reasons-port", type=int, default=9469, help="the reasons service's /metrics (default 9469)")
    p.add_argument("--label-join-port", type=int, default=9470, help="the join worker's /metrics, /readyz (default 9470)")
    p.add_argument("--ui-port", type=int, default=9465, help="the status page (default 9465)")
    p.set_defaults(func=run, parser=p)


def run(args) -> int:
    from stream.kafka.broker import EmbeddedBroker

    work = Path(args.dir).resolve()
    repo, models = _repo_and_models(args, work)
    stop: list[int] = []
    # Until the stack is up, SIGTERM ends start-up the way Ctrl-C does: through the clean-up below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(port=args.port or None))
        bootstrap = broker.bootstrap_servers
        processes = _start(stack, args, work, repo, models, bootstrap)
        signal.signal(signal.SIGTERM, lambda *_: stop.append(signal.SIGTERM))
        signal.signal(signal.SIGINT, lambda *_: stop.append(signal.SIGINT))
        _print_guide(args, repo, models, bootstrap)
        while not stop:
            dead = [(name, proc) for name, proc in processes.items() if proc.proc is None or proc.proc.poll() is not None]
            if dead:
                name, proc = dead[0]
                print(f"sluice up: the {name} stopped; its log: {proc.log_path}. Stopping the stack.", file=sys.stderr, flush=True)
                return 1
            if not broker.running:
                print("sluice up: the broker stopped. Stopping the stack.", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
        print("stopping the stack", flush=True)
    print("stopped", flush=True)
    return 0


def _repo_and_models(args, work: Path) -> tuple[Path, Path]:
    if args.repo_path:
        repo = Path(args.repo_path).resolve()
        models = Path(args.model_dir or work / "models").resolve()
        if not (models / "champion").exists():
            msg = f"no trained model in {models}; train one first: sluice train --repo {args.repo_path} --model-dir {models}"
            raise SluiceError(msg)
        return repo, models
    repo, models = work / "repo", Path(args.model_dir or work / "models").resolve()
    if not (models / "champion").exists():
        _make_starter(repo, models)
    return repo, models


def _make_starter(repo: Path, models: Path) -> None:
    """The starter repo of `sluice init`: written, applied, materialized and trained (about a minute)."""
    import shutil
    from datetime import UTC, datetime

    from stream.cli.init import write_repo
    from stream.feast import repo as feast_repo
    from stream.lifecycle.train import train

    print(f"· first run: a starter repo in {repo} (sluice init, feast apply, materialize, train)", flush=True)
    if repo.exists():
        shutil.rmtree(repo)
    write_repo(repo)
    feast_repo.apply(repo)
    feast_repo.materialize(repo, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC), views=["user_profile"])
    result = train(repo, models, num_trees=50)
    print(f"  model {result.version}, validation AUC {result.validation_auc:.3f}", flush=True)


def _start(stack: contextlib.ExitStack, args, work: Path, repo: Path, models: Path, bootstrap: str) -> dict:
    join = {"SLUICE_LABEL_JOIN": "service"}  # the scoring worker reads neither labels nor its prediction log
    worker = worker_process(bootstrap, repo, models, work, "worker", app_id=args.app_id, metrics_port=args.metrics_port, env=join)
    stack.callback(worker.stop)
    print("· starting the worker", flush=True)
    worker.start().wait_ready(READY_TIMEOUT_S)
    joiner = label_join_process(bootstrap, repo, work, "label-join", app_id=args.app_id, metrics_port=args.label_join_port, env=join)
    stack.callback(joiner.stop)
    print("· starting the label join", flush=True)
    joiner.start().wait_ready(READY_TIMEOUT_S)
    monitor = monitor_process(bootstrap, repo, models, work, "monitor", app_id=args.app_id, metrics_port=args.monitor_port)
    stack.callback(monitor.stop)
    print("· starting the monitor", flush=True)
    monitor.start().wait_ready(READY_TIMEOUT_S)
    reasons = reasons_process(bootstrap, repo, models, work, "reasons", app_id=args.app_id, metrics_port=args.reasons_port)
    stack.callback(reasons.stop)
    print("· starting the reasons service", flush=True)
    reasons.start().wait_ready(READY_TIMEOUT_S)
    ui = UiProcess(
        ["--bootstrap-servers", bootstrap, "--port", str(args.ui_port), "--metrics-url", f"http://127.0.0.1:{args.metrics_port}/metrics",
         "--metrics-url", f"http://127.0.0.1:{args.label_join_port}/metrics"],
        work / "ui.log", work / "ui.ready",
    )
    stack.callback(ui.stop)
    print("· starting the status page", flush=True)
    ui.start()
    _wait_http(f"http://127.0.0.1:{args.ui_port}/", ui)
    return {"worker": worker, "label join": joiner, "monitor": monitor, "reasons service": reasons, "status page": ui}


class UiProcess(WorkerProcess):
    """`sluice ui` in a child process (ready when it answers HTTP: see _wait_http)."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stream.cli", "ui", *self.args]


def _wait_http(url: str, proc) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            msg = f"the status page exited with code {proc.proc.returncode}; see {proc.log_path}"
            raise SluiceError(msg)
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.3)
    msg = f"the status page did not answer at {url} within {READY_TIMEOUT_S:.0f} s; see {proc.log_path}"
    raise SluiceError(msg)


def _print_guide(args, repo: Path, models: Path, bootstrap: str) -> None:
    from features.feast_repo import load_plan, open_store

    plan = load_plan(open_store(repo))
    sample = repo / "data" / "live.jsonl"
    send = f"sluice send {sample if sample.exists() else 'EVENTS.jsonl'} --repo {repo} --bootstrap-servers {bootstrap} --rate 100"
    lines = [
        "",
        "sluice is up (Ctrl-C stops everything):",
        f"  broker         {bootstrap}",
        f"  status page    http://127.0.0.1:{args.ui_port}/",
        f"  worker         http://127.0.0.1:{args.metrics_port}/metrics  /readyz  /livez",
        f"  monitor        http://127.0.0.1:{args.monitor_port}/metrics",
        f"  reasons        http://127.0.0.1:{args.reasons_port}/metrics  (reason codes on the `reasons` topic)",
        f"  label join     http://127.0.0.1:{args.label_join_port}/metrics  (labels topic joined onto `labeled`)",
        f"  events topic   {plan.schema.topic} (key: {plan.partition_key})",
        "",
        "try:",
        f"  {send}",
        f"  sluice deploy show --bootstrap-servers {bootstrap}",
        f"  sluice models list --registry {models}",
        "",
    ]
    print("\n".join(lines), flush=True)

