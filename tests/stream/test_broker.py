"""`sluice broker` starts Tansu on 127.0.0.1, accepts clients, and stops on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
from confluent_kafka.admin import AdminClient

from stream.broker import free_port


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# A process started in the background by a non-interactive shell (`sluice
# broker &` in a script, CI runners) inherits SIGINT as ignored; Ctrl-C or
# `kill -INT` must stop the broker all the same.
@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_sluice_broker_runs_until_interrupted(inherited):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_ignore_sigint if inherited == "ignored" else None,
    )
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        assert admin.list_topics(timeout=10) is not None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "broker stopped" in proc.stdout.read()
        time.sleep(0.2)
        # Nothing listens any more: the broker process is gone.
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()
