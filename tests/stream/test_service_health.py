"""/livez and /readyz of the services beside the worker: the monitor, the rollout controller and the status page.

Each runs against a broker of its own (stopped half-way: "the broker is
gone"), since the session's broker must outlive the test.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from stream.kafka.broker import EmbeddedBroker
from stream.metrics import LIVENESS_PATH, METRICS_PATH, READINESS_PATH
from stream.settings import Settings


@pytest.fixture
def own_broker():
    broker = EmbeddedBroker().start()
    yield broker
    broker.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def _wait_status(port: int, path: str, status: int, limit_s: float, proc=None, saying: str = "") -> str:
    deadline = time.monotonic() + limit_s
    while True:
        got, body = _get(port, path)
        if got == status and saying in body:
            return body
        if proc is not None and proc.proc.poll() is not None:
            pytest.fail(f"the process exited with {proc.proc.returncode}: {proc.log_path.read_text()[-2000:]}")
        assert time.monotonic() < deadline, f"{path} answered {got} {body!r}, not {status}, for {limit_s:.0f} s"
        time.sleep(0.2)


def _ready_then_not_without_broker(port: int, broker: EmbeddedBroker, proc=None) -> None:
    _wait_status(port, READINESS_PATH, 200, 90, proc)
    assert _get(port, LIVENESS_PATH)[0] == 200
    broker.stop()
    _wait_status(port, READINESS_PATH, 503, 20, proc, saying="the broker does not answer")
    # Alive all the same: a restart would not bring the broker back.
    assert _get(port, LIVENESS_PATH)[0] == 200


def test_monitor_process_probes(own_broker, tmp_path):
    from stream.tools.process import monitor_process

    models = tmp_path / "models"
    models.mkdir()
    port = _free_port()
    monitor = monitor_process(
        own_broker.bootstrap_servers, tmp_path / "no-repo", models, tmp_path, "monitor", app_id="health-app",
        metrics_port=port, extra_args=["--events-topic", "health-events", "--attribution-budget", "0"],
    )
    monitor.start()
    try:
        _wait_status(port, READINESS_PATH, 200, 90, monitor)
        text = _get(port, METRICS_PATH)[1]
        assert 'sluice_service_ready{service="monitor"} 1.0' in text and "sluice_monitor_info" in text
        _ready_then_not_without_broker(port, own_broker, monitor)
        assert 'sluice_service_ready{service="monitor"} 0.0' in _get(port, METRICS_PATH)[1]
    finally:
        monitor.stop()


def test_status_page_process_probes(own_broker, tmp_path):
    from stream.cli.up import UiProcess

    port = _free_port()
    ui = UiProcess(["--bootstrap-servers", own_broker.bootstrap_servers, "--port", str(port)], tmp_path / "ui.log", tmp_path / "ui.ready")
    ui.start()
    try:
        _ready_then_not_without_broker(port, own_broker, ui)
    finally:
        ui.stop()


def test_rollout_controller_probes(own_broker, tmp_path):
    from prometheus_client import CollectorRegistry

    from stream.services.rollout import Controller, controller_health

    settings = Settings(bootstrap_servers=own_broker.bootstrap_servers, model_dir=tmp_path, partitions=1)
    controller = Controller(settings, "card_id", "v1", interval_s=0.2)
    health = controller_health(controller)
    health.liveness_timeout_s = 2.0
    port = _free_port()
    health.serve(port, "127.0.0.1", CollectorRegistry())
    try:
        _wait_status(port, READINESS_PATH, 503, 10, saying="reading the deployments")
        controller.start()
        _ready_then_not_without_broker(port, own_broker)
        # The loop stops turning: not alive once its heartbeat is older than the timeout.
        controller._stop.set()
        controller._thread.join(10)
        _wait_status(port, LIVENESS_PATH, 503, 10, saying="no heartbeat from the rollout loop")
    finally:
        health.close()
        if controller._thread is not None:
            controller.stop()
