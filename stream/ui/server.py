"""The status page's HTTP door: the page, its assets, and `/api/status`, which it polls.

    GET /                    the page (static/index.html)
    GET /static/<file>       its script and style, and plotly.min.js from the plotly package
    GET /api/status          everything the page shows, as one JSON object
    GET /healthz             200 "ok"
    GET /livez, /readyz      the probes (stream/health_http.py): alive while the topic reader runs,
                             ready while the broker answers and the reader has no error

Everything is read-only and unauthenticated: it binds to 127.0.0.1 unless
told otherwise (`--host`), like the workers' metrics endpoints.
"""

from __future__ import annotations

import http.server
import importlib.resources
import signal
import socket
import threading
import time
import urllib.parse
from dataclasses import asdict

import orjson

from features.errors import SluiceError
from stream.health_http import ServiceHealth
from stream.kafka.clients import make_admin
from stream.lifecycle.experiment_live import LiveExperiments
from stream.metrics import probe_reply
from stream.ui.board import Board
from stream.ui.feed import Topics, TopicFeed
from stream.ui.monitoring import MonitorBoard, MonitorGauges
from stream.ui.scrape import Scraper

STATIC = importlib.resources.files("stream.ui") / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


class UiError(SluiceError):
    """The status page cannot start."""


def plotly_js() -> bytes:
    """plotly.js as the `plotly` Python package ships it (served from here: the page needs no internet)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as exc:
        msg = "sluice ui draws its charts with plotly.js from the plotly package; install it with pip install 'sluice[ui]'"
        raise UiError(msg) from exc
    return get_plotlyjs().encode()


def static_files() -> dict[str, tuple[bytes, str]]:
    """Every file the server hands out under /static/, by name: (body, content type)."""
    files = {}
    for entry in STATIC.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    files["plotly.min.js"] = (plotly_js(), CONTENT_TYPES[".js"])
    return files


class StatusPage:
    """The readers, the scraper and the server; `status()` is what /api/status answers."""

    def __init__(
        self, bootstrap: str, topics: Topics, metrics_urls: list[str], *, window_s: int = 600, lookback_s: float = 900,
        refresh_ms: int = 2000, scrape_interval_s: float = 2.0,
    ):
        self.topics, self.window_s, self.refresh_ms = topics, window_s, refresh_ms
        self.files = static_files()
        self.board = Board(window_s)
        self.monitor = MonitorBoard()
        self.gauges = MonitorGauges()
        self.experiments = LiveExperiments()
        self.feed = TopicFeed(bootstrap, self.board, self.monitor, topics, lookback_s=lookback_s, experiments=self.experiments)
        self.scraper = Scraper(metrics_urls, interval_s=scrape_interval_s, listeners=[self.gauges.add_scrape])
        self.health = ServiceHealth(
            "ui", make_admin(bootstrap).list_topics, working=lambda: self.feed.error,
            alive=lambda: None if self.feed.is_alive() else "the topic reader stopped",
        )
        self._server: http.server.ThreadingHTTPServer | None = None

    def status(self) -> dict:
        now_ms = int(time.time() * 1000)
        return {
            "now_ms": now_ms,
            "window_s": self.window_s,
            "refresh_ms": self.refresh_ms,
            **self.board.snapshot(now_ms),
            "monitoring": {**self.monitor.snapshot(), **self.gauges.snapshot()},
            "experiments": self.experiments.report(),
            "fleet": self.scraper.snapshot(),
            "feed": self.feed.status(),
            "topics": asdict(self.topics),
        }

    def start(self, host: str, port: int) -> tuple[str, int]:
        handler = type("Handler", (_Handler,), {"page": self})
        server_class = http.server.ThreadingHTTPServer
        if ":" in host:
            server_class = type("Server6", (server_class,), {"address_family": socket.AF_INET6})
        try:
            self._server = server_class((host, port), handler)
        except OSError as exc:
            msg = f"cannot serve the status page on {host}:{port} ({exc.strerror or exc}); pick another --port or --host"
            raise UiError(msg) from exc
        self._server.daemon_threads = True
        self.feed.start()
        self.scraper.start()
        self.health.start()
        threading.Thread(target=self._server.serve_forever, name="sluice-ui-http", daemon=True).start()
        return self._server.server_address[:2]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.health.close()
        self.scraper.stop()
        self.feed.stop()


class _Handler(http.server.BaseHTTPRequestHandler):
    page: StatusPage

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urllib.parse.urlsplit(self.path).path
        probe = probe_reply(self.page.health, path)
        if probe is not None:
            self._reply(*probe, "text/plain; charset=utf-8")
        elif path in ("/", "/index.html"):
            body, kind = self.page.files["index.html"]
            self._reply(200, body, kind)
        elif path.startswith("/static/") and path[len("/static/"):] in self.page.files:
            body, kind = self.page.files[path[len("/static/"):]]
            self._reply(200, body, kind, cache=True)
        elif path == "/api/status":
            self._reply(200, orjson.dumps(self.page.status(), option=orjson.OPT_NON_STR_KEYS), "application/json")
        elif path == "/healthz":
            self._reply(200, b"ok\n", "text/plain; charset=utf-8")
        else:
            answers = b"/, /static/..., /api/status, /healthz, /livez and /readyz"
            self._reply(404, b"not found: this server answers " + answers + b"\n", "text/plain")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _refuse(self) -> None:
        self._reply(405, b"method not allowed\n", "text/plain")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def _reply(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 - a poll every 2 s is not worth a log line
        pass


def run_ui(bootstrap: str, topics: Topics, metrics_urls: list[str], *, host: str, port: int, **options) -> int:
    """Serve the page until SIGTERM or Ctrl-C."""
    page = StatusPage(bootstrap, topics, metrics_urls, **options)
    address, bound = page.start(host, port)
    shown = f"[{address}]" if ":" in address else address
    print(f"status page: http://{shown}:{bound}/  (Ctrl-C stops it)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        page.stop()
        print("status page stopped", flush=True)
    return 0
