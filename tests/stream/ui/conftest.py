"""Fixtures of the status page's browser test: the browser, worker- and monitor-like endpoints, `sluice ui`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stream.kafka.broker import free_port
from stream.kafka.clients import ensure_topics

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

#: A worker-like metrics endpoint: stream.metrics' collectors with given values, served by stream.metrics.serve.
WORKER = r"""
import sys
from stream import metrics
port, predictions, dlq, late, events_in, ready = (int(a) for a in sys.argv[1:7])
metrics.PREDICTIONS_OUT.labels("v1").inc(predictions - predictions // 5)
metrics.PREDICTIONS_OUT.labels("v2").inc(predictions // 5)
metrics.DLQ.labels("invalid_json").inc(dlq)
metrics.LATE.labels("0").inc(late)
metrics.EVENTS_IN.labels("0").inc(events_in)
metrics.EVENTS_IN.labels("1").inc(events_in // 2)  # a later stage's input: not events in
metrics.READY.set(ready)
metrics.WORKER_INFO.labels("ui-test").set(1)  # as stream.worker.app.run_worker sets it
metrics.LATENCY.observe_many([0.003] * 100)  # all in the bucket (0.002, 0.005]
if sys.argv[7:] == ["online"]:  # this one runs the label join: its online-evaluation gauges
    from stream.worker import labels
    labels.ONLINE["auc"].labels("v1", "champion").set(0.875)
    labels.ONLINE["precision"].labels("v1", "champion").set(0.5)
    labels.ONLINE["recall"].labels("v1", "champion").set(0.25)
    labels.COVERAGE.labels("v1", "champion").set(0.4)
    labels.PROVISIONAL.labels("v1", "champion").set(1)
server = metrics.serve(port)
print("serving", flush=True)
sys.stdin.read()  # until the test closes it
server.close()
"""
#: A monitor-like endpoint: the monitor's gauges, set from lines on stdin. It serves the default registry, as
#: `sluice monitor` once did: the worker's series too (sluice_ready 0 ...), which must not make it a worker.
MONITOR = r"""
import json, sys
from stream import metrics
from stream.monitor import gauges
server = metrics.serve(int(sys.argv[1]))
print("serving", flush=True)
for line in sys.stdin:
    for name, labels, value in json.loads(line):
        if name == "set_window":  # the monitor's own call after judging a window
            gauges.set_window(**labels)
        else:
            getattr(gauges, name).labels(**labels).set(value)
    print("set", flush=True)
server.close()
"""
#: (predictions, dlq, late, events in, ready[, "online"]) of the two workers.
WORKERS = ((1200, 3, 2, 1210, 1, "online"), (800, 1, 0, 805, 0))


class Endpoint:
    """A child process serving /metrics; closing its stdin stops it."""

    def __init__(self, script: str, *args):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, str(port), *map(str, args)], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )

    def wait_serving(self) -> Endpoint:
        assert self.proc.stdout.readline().strip() == "serving"
        return self

    def send(self, updates: list) -> None:
        self.proc.stdin.write(json.dumps(updates) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "set"

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _skip_or_fail(message: str):
    if os.environ.get("SLUICE_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def chromium(monkeypatch):
    """Selenium's Chrome driver on Debian's chromium and chromedriver; nothing is downloaded."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        _skip_or_fail(
            "CHROMIUM NOT INSTALLED: the status page was NOT tested in a browser; "
            "install it with: apt-get install -y chromium chromium-driver"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _skip_or_fail("SELENIUM NOT INSTALLED: pip install -e '.[dev]'; the status page was NOT tested in a browser")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for (or download) a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1500,2400", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def endpoints():
    """Two worker-like /metrics endpoints and a monitor-like one: {"workers": [...], "monitor": ...}."""
    started = []
    try:
        for values in WORKERS:
            started.append(Endpoint(WORKER, *values))
        started.append(Endpoint(MONITOR))
        for endpoint in started:  # started together: each takes a second or more to import
            endpoint.wait_serving()
        yield {"workers": started[:-1], "monitor": started[-1]}
    finally:
        for endpoint in started:
            endpoint.close()


@pytest.fixture
def topics(broker, unique):
    names = {
        "events": unique("ui-txn"), "log": unique("ui-log"), "monitoring": unique("ui-mon"),
        "deployments": unique("ui-dep"), "labeled": unique("ui-lab"),
    }
    ensure_topics(broker.bootstrap_servers, [names["log"], names["labeled"]], 2)
    ensure_topics(broker.bootstrap_servers, [names["monitoring"], names["deployments"]], 1)
    return names


@pytest.fixture
def ui(broker, topics, endpoints, tmp_path):
    """`sluice ui` as a subprocess; its base URL."""
    log = tmp_path / "ui.log"
    args = [
        sys.executable, "-m", "stream.cli", "ui", "--bootstrap-servers", broker.bootstrap_servers, "--port", "0",
        "--events-topic", topics["events"], "--prediction-log-topic", topics["log"],
        "--monitoring-topic", topics["monitoring"], "--deployments-topic", topics["deployments"],
        "--labeled-topic", topics["labeled"], "--refresh", "0.5",
    ]
    for endpoint in [*endpoints["workers"], endpoints["monitor"]]:
        args += ["--metrics-url", endpoint.url]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=out, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, f"no address from sluice ui: {line!r} {log.read_text()}"
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()
