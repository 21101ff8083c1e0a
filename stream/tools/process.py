"""Start and stop worker processes (used by the demo, the benchmark and tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from features.errors import SluiceError
from stream.kafka.broker import die_with_parent
from stream.kafka.topics import AppTopics
from stream.settings import ENV, Settings


def run_topics(plan, app_id: str) -> AppTopics:
    """The topics of one measured run: SLUICE_*_TOPIC where set, else outputs of the run's own (`<app id>.predictions`, `.log`).

    Own outputs keep runs on one broker apart; `topics.env()` hands the same
    names to the workers the run starts.
    """
    settings = Settings.from_env(app_id=app_id)
    own = {"predictions_topic": f"{app_id}.predictions", "prediction_log_topic": f"{app_id}.log"}
    return AppTopics.for_plan(settings.with_(**{k: v for k, v in own.items() if not os.environ.get(ENV[k])}), plan)


class WorkerProcess:
    """`sluice worker` in a child process; ready once it holds its partitions."""

    def __init__(self, args: list[str], log_path: Path, ready_file: Path, env: dict | None = None):
        self.args = args
        self.log_path = Path(log_path)
        self.ready_file = Path(ready_file)
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stream.cli", "worker", *self.args]

    def start(self) -> WorkerProcess:
        self.ready_file.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, SLUICE_READY_FILE=str(self.ready_file), PYTHONWARNINGS="ignore", **self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                return
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
                msg = f"worker exited with code {self.proc.returncode}:\n" + "\n".join(tail)
                raise SluiceError(msg)
            time.sleep(0.1)
        msg = f"worker not ready after {timeout_s:.0f} s; see {self.log_path}"
        raise SluiceError(msg)

    def stop(self, timeout_s: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def terminate(self) -> None:
        """SIGTERM without waiting (the worker leaves its group and stops on its own); `stop` later reaps it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to commit or flush."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def worker_process(
    bootstrap: str, repo_path: Path, model_dir: Path, work_dir: Path, name: str, *, app_id: str, partitions: int = 4,
    metrics_port: int = 0, env: dict | None = None, extra_args: list[str] | None = None,
) -> WorkerProcess:
    """A `sluice worker` over a repo and model: the one place its argument list is written.

    Its log, ready file and data directory are `<work_dir>/<name>.log`,
    `<name>.ready` and `data-<name>` (one data directory per process:
    RocksDB locks its files, and a second worker stands for another machine).
    """
    args = [
        "--bootstrap-servers", bootstrap,
        "--repo", str(repo_path),
        "--model-dir", str(model_dir),
        "--partitions", str(partitions),
        "--metrics-port", str(metrics_port),
        "--app-id", app_id,
        *(extra_args or []),
    ]
    work_dir = Path(work_dir)
    env = {"SLUICE_DATA_DIR": str(work_dir / f"data-{name}"), **(env or {})}
    return WorkerProcess(args, work_dir / f"{name}.log", work_dir / f"{name}.ready", env)


class MonitorProcess(WorkerProcess):
    """`sluice monitor` in a child process; ready once its consumer holds its partitions."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stream.cli", "monitor", *self.args]


def monitor_process(
    bootstrap: str, repo_path: Path, model_dir: Path, work_dir: Path, name: str, *, app_id: str, metrics_port: int,
    extra_args: list[str] | None = None, env: dict | None = None,
) -> MonitorProcess:
    """A `sluice monitor` of the consumer group `app_id`; its log and ready file are `<work_dir>/<name>.log`, `.ready`."""
    args = _service_args(bootstrap, repo_path, model_dir, app_id, metrics_port) + (extra_args or [])
    work_dir = Path(work_dir)
    return MonitorProcess(args, work_dir / f"{name}.log", work_dir / f"{name}.ready", env)


class ReasonsProcess(WorkerProcess):
    """`sluice reasons` in a child process; ready once its consumer holds its partitions."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stream.cli", "reasons", *self.args]


def reasons_process(
    bootstrap: str, repo_path: Path, model_dir: Path, work_dir: Path, name: str, *, app_id: str, metrics_port: int,
    env: dict | None = None,
) -> ReasonsProcess:
    """A `sluice reasons` of the consumer group `app_id`; its log and ready file are `<work_dir>/<name>.log`, `.ready`."""
    args = _service_args(bootstrap, repo_path, model_dir, app_id, metrics_port)
    work_dir = Path(work_dir)
    return ReasonsProcess(args, work_dir / f"{name}.log", work_dir / f"{name}.ready", env)


def _service_args(bootstrap: str, repo_path: Path, model_dir: Path, app_id: str, metrics_port: int) -> list[str]:
    return [
        "--bootstrap-servers", bootstrap, "--repo", str(repo_path), "--model-dir", str(model_dir),
        "--app-id", app_id, "--metrics-port", str(metrics_port),
    ]


class LabelJoinProcess(WorkerProcess):
    """`sluice label-join` in a child process; ready once it holds its partitions."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stream.cli", "label-join", *self.args]


def label_join_process(
    bootstrap: str, repo_path: Path, work_dir: Path, name: str, *, app_id: str, metrics_port: int = 0,
    partitions: int | None = None, env: dict | None = None,
) -> LabelJoinProcess:
    """A join-only worker of the app `app_id` (group `<app id>-join`); its log, ready file and data directory
    are `<work_dir>/<name>.log`, `<name>.ready` and `data-<name>`."""
    args = ["--bootstrap-servers", bootstrap, "--repo", str(repo_path), "--app-id", app_id, "--metrics-port", str(metrics_port)]
    if partitions is not None:
        args += ["--partitions", str(partitions)]
    work_dir = Path(work_dir)
    env = {"SLUICE_DATA_DIR": str(work_dir / f"data-{name}"), **(env or {})}
    return LabelJoinProcess(args, work_dir / f"{name}.log", work_dir / f"{name}.ready", env)
