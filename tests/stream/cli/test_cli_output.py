"""What the CLI writes: no known Feast warnings, no terminal escape codes in a worker log file.

Each test runs the real command in its own interpreter over the demo repo; the
worker tests run real workers on the session broker.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading

import pytest

from stream.cli.quiet import FEAST_WARNINGS
from stream.kafka.broker import die_with_parent
from tests.conftest import ROOT

ESC = "\x1b["
#: Runs the CLI with the warning filter switched off: the control run.
UNFILTERED = (
    "import sys; import stream.cli.quiet as q; q.install = lambda: None; "
    "from stream.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _env(**extra) -> dict:
    """This environment without warning filters or colour switches."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "FORCE_COLOR", "NO_COLOR")}
    return {**env, **extra}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


def _known_warnings(text: str) -> list[str]:
    return [start for _, start in FEAST_WARNINGS if start in text]


def test_a_command_prints_no_feast_warnings(trained_repo, tmp_path):
    # `python -m stream.cli`: the entry worker processes are started through, so they run the same filter.
    args = ["backfill", "--repo", str(trained_repo["path"]), "--output"]
    proc = _run([sys.executable, "-m", "stream.cli", *args, str(tmp_path / "quiet.parquet")])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("backfilled "), proc.stdout
    assert _known_warnings(proc.stderr) == [], proc.stderr
    assert proc.stderr == "", proc.stderr  # nothing else either

    # The same command without the filter prints Feast's alpha warning: the
    # check above would catch the filter going missing.
    control = _run([sys.executable, "-c", UNFILTERED, *args, str(tmp_path / "loud.parquet")])
    assert control.returncode == 0, control.stderr
    assert "Stream feature views are experimental" in control.stderr


CHECK_FILTERS = """
import sys, warnings
from stream.cli import quiet
if sys.argv[1] == "on":
    quiet.install()
# Feast's import puts "once" filters for RuntimeWarning and DeprecationWarning
# in front of every filter installed before it.
from feast import Entity
Entity(name="card", join_keys=["card_id"])  # no value_type: Feast's DeprecationWarning, here in __main__
warnings.warn("Stream feature views are experimental features in alpha development. Test.", RuntimeWarning)
warnings.warn("sluice test: an unrelated warning", RuntimeWarning)
warnings.warn("sluice test: an unrelated deprecation", DeprecationWarning)
"""


@pytest.mark.parametrize("filters", ["on", "off"])
def test_the_filter_hides_exactly_the_known_warnings(filters):
    proc = _run([sys.executable, "-c", CHECK_FILTERS, filters])
    assert proc.returncode == 0, proc.stderr
    # Anything else still shows.
    assert "RuntimeWarning: sluice test: an unrelated warning\n" in proc.stderr
    assert "DeprecationWarning: sluice test: an unrelated deprecation\n" in proc.stderr
    if filters == "on":
        assert _known_warnings(proc.stderr) == [], proc.stderr
    else:
        assert len(_known_warnings(proc.stderr)) == len(FEAST_WARNINGS), proc.stderr


@pytest.fixture
def no_colour_switches(monkeypatch):
    for name in ("FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)


def test_worker_log_in_a_file_has_no_escape_codes(trained_repo, start_worker, tmp_path, no_colour_switches):
    # The default log level (warn): faust's start-up spinner is on, and wrote
    # cursor codes into the file before the fix.
    worker = start_worker(trained_repo)
    log_path = worker.log_path
    worker.stop()
    log = log_path.read_text(errors="replace")
    assert ESC not in log, repr(log[:2000])


def test_worker_log_is_not_coloured_when_only_stdout_is_a_terminal(
    trained_repo, broker, tmp_path, unique, no_colour_switches
):
    """`sluice worker 2> worker.log` from a shell: stdout a terminal, the log (stderr) a file."""
    from stream.tools.process import worker_process

    worker = worker_process(
        broker.bootstrap_servers, trained_repo["path"], trained_repo["model_dir"], tmp_path, "tty",
        app_id=unique("tty"), extra_args=["--log-level", "info"],
    )
    master, slave = pty.openpty()
    terminal: list[bytes] = []

    def drain() -> None:  # a terminal that nobody reads would block the worker once full
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the worker closed its end
                return
            if not data:
                return
            terminal.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    try:
        env = _env(SLUICE_READY_FILE=str(worker.ready_file), **worker.env)
        with open(worker.log_path, "wb") as log:
            worker.proc = subprocess.Popen(
                worker.command(), stdout=slave, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        os.close(slave)
        slave = None
        reader.start()
        worker.wait_ready()
    finally:
        worker.stop()
        if slave is not None:
            os.close(slave)
        if reader.is_alive():
            reader.join(timeout=10)
        os.close(master)
    log = worker.log_path.read_text(errors="replace")
    assert "[INFO]" in log  # the log was written, at info level
    assert ESC not in log, repr(log[:2000])
