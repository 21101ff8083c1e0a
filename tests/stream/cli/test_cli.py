"""The `sluice` command as users call it: documented defaults work without extra flags."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SLUICE = str(Path(sys.executable).parent / "sluice")


def _env() -> dict[str, str]:
    """The environment without SLUICE_* variables, so the documented defaults apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run(*args: str, timeout_s: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run `sluice args` in its own session; on timeout the whole process group (brokers, workers) is killed."""
    proc = subprocess.Popen(
        [SLUICE, *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`sluice {' '.join(args)}` did not finish within {timeout_s:.0f} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def subcommands() -> list[str]:
    usage = run("--help").stdout
    match = re.search(r"\{([\w,-]+)\}", usage)
    assert match, usage
    return match.group(1).split(",")


def test_help():
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: sluice" in proc.stdout
    assert {"broker", "worker", "train", "parity", "bench"} <= set(subcommands())


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_has_help(command):
    proc = run(command, "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"usage: sluice {command}" in proc.stdout


def test_parity_with_only_the_event_count():
    """`sluice parity --events 300`: the README's default partitions (4), one SIGKILL, no mismatch.

    300 events take about 40 s here (a tiny repo is prepared and trained,
    two workers are started); fewer would not change the cost, which is
    almost all start-up.
    """
    started = time.monotonic()
    proc = run("parity", "--events", "300", timeout_s=300)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 partitions" in proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["events"] == 300 and report["compared"] == 300
    assert report["mismatches"] == 0 and report["restarts"] == 1
    print(f"sluice parity --events 300: {seconds:.1f} s")


def test_parity_outside_the_checkout_says_where_the_repo_is(tmp_path):
    proc = run("parity", "--events", "300", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "sluice: error: sluice parity copies the demo feature repo" in proc.stderr
    assert "--repo" in proc.stderr
