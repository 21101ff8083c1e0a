"""The batch histogram must expose exactly what prometheus_client's own Histogram does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stream.metrics import BatchHistogram

BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _lines(text: str, name: str) -> list[str]:
    return sorted(
        line.replace(name, "m", 1)
        for line in text.splitlines()
        if line.startswith(name) and "_created" not in line
    )


def test_batch_histogram_matches_prometheus_histogram():
    registry = CollectorRegistry()
    reference = Histogram("ref", "d", buckets=BUCKETS, registry=registry)
    ours = BatchHistogram("ours", "d", buckets=BUCKETS, registry=registry)
    # Values on bucket bounds (le is inclusive), between them, and beyond the last.
    batches = [[0.0005, 0.001, 0.0011, 0.3], [], [20.0, 0.1, 0.1, 5.0, 0.002]]
    for batch in batches:
        for value in batch:
            reference.observe(value)
        ours.observe_many(batch)
    text = generate_latest(registry).decode()
    ours_lines, ref_lines = _lines(text, "ours"), _lines(text, "ref")
    # Buckets and count exactly; the sum up to float summation order.
    assert [x for x in ours_lines if not x.startswith("m_sum")] == [x for x in ref_lines if not x.startswith("m_sum")]
    (ours_sum,) = [float(x.split()[1]) for x in ours_lines if x.startswith("m_sum")]
    (ref_sum,) = [float(x.split()[1]) for x in ref_lines if x.startswith("m_sum")]
    assert abs(ours_sum - ref_sum) < 1e-9
    assert 'ours_bucket{le="0.001"} 2.0' in text
    assert "ours_count 9.0" in text


# -- The HTTP endpoint: /metrics, /livez, /readyz, nothing else ------------------

import socket  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

import pytest  # noqa: E402

from stream import metrics  # noqa: E402
from stream.kafka.broker import free_port  # noqa: E402


def _get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def endpoint():
    """Factory: serve() on a free port; every server is shut down after the test."""
    servers = []

    def start(**kwargs):
        server = metrics.serve(free_port(), **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    metrics.READY.set(0)


def test_serves_on_loopback_by_default(endpoint):
    server = endpoint()
    assert server.host == "127.0.0.1"
    assert server.socket_address[0] == "127.0.0.1"
    status, body = _get(server.port, "/metrics")
    assert status == 200
    assert "sluice_ready" in body


def test_only_metrics_and_health_paths_are_served(endpoint):
    server = endpoint()
    for path in ("/", "/favicon.ico", "/metricsx", "/metrics/", "/admin", "/livez/x", "/../etc/passwd"):
        status, _ = _get(server.port, path)
        assert status == 404, path
    assert _get(server.port, "/metrics?name[]=sluice_ready")[0] == 200  # query strings are allowed


def test_other_methods_are_refused(endpoint):
    server = endpoint()
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 405


def test_readyz_follows_the_ready_gauge(endpoint):
    server = endpoint()
    metrics.READY.set(0)
    assert _get(server.port, "/readyz")[0] == 503
    metrics.READY.set(1)
    assert _get(server.port, "/readyz")[0] == 200
    metrics.READY.set(0)
    assert _get(server.port, "/readyz")[0] == 503


def test_livez_fails_when_the_event_loop_stops_beating(endpoint):
    server = endpoint(liveness_timeout_s=0.5)
    metrics.beat()
    assert _get(server.port, "/livez")[0] == 200
    time.sleep(0.8)
    status, body = _get(server.port, "/livez")
    assert status == 503
    assert "no heartbeat" in body
    metrics.beat()
    assert _get(server.port, "/livez")[0] == 200


def test_livez_counts_from_start_before_the_first_beat(endpoint):
    # A worker restoring its tables may not beat yet; it is alive until the timeout passes.
    server = endpoint(liveness_timeout_s=30)
    assert _get(server.port, "/livez")[0] == 200


def test_heartbeat_task_beats(endpoint):
    import asyncio

    server = endpoint(liveness_timeout_s=0.3)

    async def run():
        task = asyncio.ensure_future(metrics.heartbeat(interval_s=0.05))
        await asyncio.sleep(0.6)
        status = await asyncio.get_running_loop().run_in_executor(None, _get, server.port, "/livez")
        task.cancel()
        return status[0]

    assert asyncio.run(run()) == 200


def test_port_zero_is_off():
    assert metrics.serve(0) is None


def test_a_port_in_use_is_a_sluice_error(endpoint):
    server = endpoint()
    from features.errors import SluiceError

    with pytest.raises(SluiceError, match=rf"127\.0\.0\.1:{server.port}.*--metrics-port"):
        metrics.serve(server.port)


def test_can_bind_all_interfaces_when_asked(endpoint):
    server = endpoint(host="0.0.0.0")
    assert server.socket_address[0] == "0.0.0.0"
    # Reachable through an address other than the loopback one it was asked for.
    assert _get(server.port, "/readyz", host="localhost")[0] in (200, 503)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
