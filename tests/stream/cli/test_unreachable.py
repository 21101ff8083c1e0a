"""Every command that talks to a broker answers an unreachable one with one line naming it, and a non-zero exit.

The address is a real closed port on this machine (bound, then released),
so the connection is refused by the kernel, as for a broker that is down.
The time each command takes is printed (run with -s to see it); the
subprocess timeout is only a guard against a command that hangs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from stream.kafka.reach import BrokerUnreachable, check_reachable
from stream.settings import Settings

HANG_GUARD_S = 30
V = "v20261101-120000-3f2a9c1d"

#: Every command (and form) that talks to a broker, without the broker flag.
COMMANDS = {
    "worker": ["worker"],
    "deploy champion": ["deploy", "champion", V],
    "deploy shadow": ["deploy", "shadow", V],
    "deploy canary": ["deploy", "canary", V],
    "deploy ab": ["deploy", "ab", V],
    "deploy show": ["deploy", "show"],
    "deploy history": ["deploy", "history"],
    "rollout": ["rollout"],
    "monitor": ["monitor"],
    "labeled-sink": ["labeled-sink", "--output", "labeled"],
    "experiment report": ["experiment", "report"],
    "ui": ["ui", "--port", "0"],
    "models show": ["models", "show", "champion"],
    "models promote": ["models", "promote", V],
    "models rollback": ["models", "rollback"],
    "train --from-labeled": ["train", "--from-labeled", "labeled"],
    "demo": ["demo"],
    "parity": ["parity"],
    "bench": ["bench", "--quick"],
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], cwd, address: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args, "--bootstrap-servers", address],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S,
    )
    return done, time.monotonic() - started


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """command -> (completed process, seconds), the commands run three at a time against one closed port."""
    address = f"127.0.0.1:{closed_port()}"
    cwd = tmp_path_factory.mktemp("unreachable")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_run, args, cwd, address) for name, args in COMMANDS.items()}
        results = {name: f.result() for name, f in futures.items()}
    print("\nseconds to the error, per command (3 at a time):")
    for name, (_, seconds) in results.items():
        print(f"  {name:<22} {seconds:5.1f}")
    return address, results


@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_unreachable_broker_gives_one_line_naming_it(outcomes, name):
    address, results = outcomes
    done, _ = results[name]
    lines = done.stderr.splitlines()
    assert done.returncode != 0
    assert len(lines) == 1, done.stderr[-3000:]
    assert address in lines[0] and lines[0].startswith("sluice: error: cannot reach Kafka")
    assert done.stdout == ""


def test_the_check_passes_on_a_live_broker_and_names_the_cause_on_a_closed_port(broker):
    check_reachable(Settings(bootstrap_servers=broker.bootstrap_servers))
    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(BrokerUnreachable, match=f"{address}.*Connection refused"):
        check_reachable(Settings(bootstrap_servers=address), timeout_s=1.0)
