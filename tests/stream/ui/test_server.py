"""The status page's HTTP door and its failures: paths, methods, an unreachable broker, a missing broker flag."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
import pytest

from stream.cli.main import main
from stream.kafka.broker import free_port
from stream.ui.feed import Topics
from stream.ui.server import StatusPage


@pytest.fixture
def page_without_kafka():
    """A page whose broker address answers nothing; stopped after the test."""
    page = StatusPage(f"127.0.0.1:{free_port()}", Topics(), [f"http://127.0.0.1:{free_port()}/metrics"], scrape_interval_s=0.5)
    host, port = page.start("127.0.0.1", 0)
    yield f"http://{host}:{port}"
    page.stop()


def _get(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_paths_and_methods(page_without_kafka):
    base = page_without_kafka
    status, kind, body = _get(base + "/")
    assert status == 200 and kind.startswith("text/html") and b"/static/plotly.min.js" in body
    status, kind, body = _get(base + "/static/plotly.min.js")
    assert status == 200 and kind.startswith("text/javascript") and len(body) > 1_000_000 and b"plotly.js" in body[:200]
    assert _get(base + "/static/status.js")[0] == 200 and _get(base + "/static/status.css")[1].startswith("text/css")
    assert _get(base + "/healthz")[:1] == (200,)
    assert _get(base + "/static/../server.py")[0] == 404 and _get(base + "/metrics")[0] == 404
    assert _get(base + "/api/status", method="POST")[0] == 405


def test_an_unreachable_broker_and_endpoint_are_shown_not_fatal(page_without_kafka):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = orjson.loads(_get(page_without_kafka + "/api/status")[2])
        if status["feed"]["error"] and status["fleet"]["targets"]:
            break
        time.sleep(0.3)
    assert "cannot list topics" in status["feed"]["error"] and "--bootstrap-servers" in status["feed"]["error"]
    # Never answered: what it is cannot be known, so it is not counted as a worker.
    (target,) = status["fleet"]["targets"]
    assert not target["up"] and "refused" in target["error"].lower() and target["kind"] == "unknown"
    assert status["fleet"]["workers"] == [] and status["fleet"]["up"] == 0
    assert status["predictions"]["total"] == 0 and status["predictions"]["latency_ms"]["p50"] is None


def test_ui_needs_bootstrap_servers(monkeypatch, capsys):
    monkeypatch.delenv("SLUICE_BOOTSTRAP_SERVERS", raising=False)
    assert main(["ui"]) == 2
    assert "--bootstrap-servers" in capsys.readouterr().err
