"""Prometheus and Grafana for the compose stack, checked without Docker.

The compose file and every provisioning file parse; `promtool` (Debian's
prometheus package) accepts the Prometheus config, its rule files and every
dashboard query; and every metric a dashboard query or an alert rule names
is one the engine really exports: the collectors registered by Sluice's own
modules, read from prometheus_client's registry with the sample names each
type exposes (`_total`, `_bucket`, `_count`, `_sum`, ...).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_deploy_files import assert_flags_known

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
#: Series Prometheus makes itself, not the engine.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
#: Grafana's variables, as Prometheus would see them once Grafana substitutes them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$version": ".*"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"}
_SUFFIXES = {
    "counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"), "info": ("_info",), "stateset": ("",), "unknown": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
}


@functools.cache
def exported() -> frozenset[str]:
    """Every sample name the engine's processes can expose: what Sluice's modules register, by type."""
    from prometheus_client import REGISTRY

    for path in sorted((ROOT / "stream").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if not module.startswith("stream.ui") and re.search(r"^from prometheus_client import", path.read_text(), re.M):
            importlib.import_module(module)
    names = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    assert "sluice_predictions_total" in names and "sluice_event_to_prediction_seconds_bucket" in names
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, keywords, labels or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, before = match.group(), text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == "." or word.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        message = "PROMTOOL NOT INSTALLED: the Prometheus files were NOT checked; apt-get install -y prometheus"
        if os.environ.get("SLUICE_REQUIRE_PROMTOOL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def prometheus() -> dict:
    return yaml.safe_load(PROMETHEUS.read_text())


def rule_files(prometheus: dict) -> list[Path]:
    return [PROMETHEUS.parent / name for name in prometheus.get("rule_files", [])]


def dashboard_queries(dashboard: dict):
    """(where, PromQL) of every panel target and query variable."""
    def walk(panels):
        for panel in panels:
            yield from walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    yield from walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((?:(.+),)?\s*\w+\)", query or "")
        if match and match.group(1):
            yield f"variable {variable['name']!r}", match.group(1)


def test_the_name_extractor_sees_metrics_only():
    expr = (
        'histogram_quantile(0.99, sum by (le, step) (rate(sluice_stage_seconds_bucket{job=~"a|b", x="y(z)"}[$__rate_interval])))'
        " / on (instance) group_left(role) max(sluice_model_info offset 5m) > bool 1e3 and up"
    )
    assert metric_names(expr) == {"sluice_stage_seconds_bucket", "sluice_model_info", "up"}
    assert metric_names("sum(rate(sluice_dlq_total[5m])) by (reason)") == {"sluice_dlq_total"}
    assert metric_names("sluice_ready") == {"sluice_ready"}


# -- compose ------------------------------------------------------------------


def test_compose_runs_prometheus_grafana_monitor_and_ui(compose):
    services = compose["services"]
    assert {"prometheus", "grafana", "monitor", "ui"} <= set(services)
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    # Unauthenticated pages: on the host's loopback only.
    for name in ("prometheus", "grafana", "ui"):
        for port in services[name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"
    assert compose["services"]["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_every_bind_mount_exists(compose):
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


def _command(service: dict) -> list[str]:
    return [str(t) for t in service["command"]]


def _flag(tokens: list[str], flag: str) -> str:
    return tokens[tokens.index(flag) + 1]


def test_ui_and_monitor_run_real_commands(compose):
    ui, monitor = _command(compose["services"]["ui"]), _command(compose["services"]["monitor"])
    assert ui[0] == "ui" and monitor[0] == "monitor"
    assert_flags_known("ui", ui[1:])
    assert_flags_known("monitor", monitor[1:])
    worker_port = _flag(_command(compose["services"]["worker"]), "--metrics-port")
    urls = [ui[i + 1] for i, t in enumerate(ui) if t == "--metrics-url"]
    assert f"dns+http://worker:{worker_port}/metrics" in urls
    assert f"dns+http://monitor:{_flag(monitor, '--metrics-port')}/metrics" in urls
    assert _flag(ui, "--host") == "0.0.0.0" and compose["services"]["ui"]["ports"] == [f"127.0.0.1:{_flag(ui, '--port')}:{_flag(ui, '--port')}"]
    assert compose["services"]["monitor"]["environment"]["SLUICE_METRICS_HOST"] == "0.0.0.0"


# -- Prometheus -----------------------------------------------------------------


def test_prometheus_config_passes_promtool(prometheus):
    assert rule_files(prometheus), "no rule files: the alert rules are not loaded"
    for path in rule_files(prometheus):
        assert path.is_file(), f"{PROMETHEUS.name} names {path.name}, which does not exist"
    proc = promtool("check", "config", str(PROMETHEUS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_every_worker_and_the_monitor(compose, prometheus):
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    ports = {
        "worker": _flag(_command(compose["services"]["worker"]), "--metrics-port"),
        "monitor": _flag(_command(compose["services"]["monitor"]), "--metrics-port"),
    }
    for job_name, service in (("sluice-worker", "worker"), ("sluice-monitor", "monitor")):
        (discovery,) = jobs[job_name]["dns_sd_configs"]
        # One A record per replica of the service: `--scale worker=N` is followed without listing workers.
        assert discovery["names"] == [service] and discovery.get("type", "SRV") == "A"
        assert str(discovery["port"]) == ports[service]
        assert jobs[job_name].get("metrics_path", "/metrics") == "/metrics"
    # The container reads the config and its rule files from the directory compose mounts.
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"])
    config_flag = next(a for a in compose["services"]["prometheus"]["command"] if a.startswith("--config.file="))
    container_config = config_flag.split("=", 1)[1]
    assert mounts["./deploy/prometheus"] == str(Path(container_config).parent)
    assert Path(container_config).name == PROMETHEUS.name


def test_alert_rules_pass_promtool_and_name_exported_metrics(prometheus):
    for path in rule_files(prometheus):
        proc = promtool("check", "rules", str(path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rules = [r for group in yaml.safe_load(path.read_text())["groups"] for r in group["rules"]]
        assert rules, f"{path.name} has no rules"
        unknown = {
            f"{r.get('alert') or r.get('record')}: {name}"
            for r in rules for name in metric_names(str(r["expr"])) - exported() - PROMETHEUS_OWN
        }
        assert not unknown, f"{path.name} names metrics the engine does not export: {sorted(unknown)}"


# -- Grafana --------------------------------------------------------------------


def test_grafana_provisioning(compose):
    provisioning = GRAFANA / "provisioning"
    files = sorted(provisioning.rglob("*.yml"))
    assert {p.parent.name for p in files} == {"datasources", "dashboards"}
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"]).groups()
    assert host in compose["services"] and datasource["type"] == "prometheus"
    assert f"127.0.0.1:{port}:{port}" in compose["services"][host]["ports"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "sluice.yml").read_text())["providers"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert DASHBOARDS, "no dashboard JSON in deploy/grafana/dashboards"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_panels(path):
    dashboard = json.loads(path.read_text())
    uid = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]["uid"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, f"panel {panel['title']!r} runs off the grid"
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == uid
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_names_an_exported_metric(path):
    queries = list(dashboard_queries(json.loads(path.read_text())))
    assert len(queries) > 20
    unknown = [
        f"{where}: {name}" for where, expr in queries for name in sorted(metric_names(expr) - exported() - PROMETHEUS_OWN)
    ]
    assert not unknown, "dashboard queries name metrics the engine does not export:\n" + "\n".join(unknown)
    assert all(metric_names(expr) for _, expr in queries)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_is_promql(path, tmp_path):
    """promtool parses each query (Grafana's variables substituted) as a recording rule."""
    rules = []
    for i, (_, expr) in enumerate(dashboard_queries(json.loads(path.read_text()))):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    check = tmp_path / "queries.yml"
    check.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = promtool("check", "rules", "--lint=none", str(check))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_worker_not_ready_fires_for_a_worker_and_never_for_another_scraped_process(prometheus, tmp_path):
    """promtool's rule unit test: `sluice_ready` 0 from the worker job alerts; from any other job (a monitor) it does not."""
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert {"sluice-worker", "sluice-monitor"} <= jobs
    (alerts,) = rule_files(prometheus)
    tests = {
        "rule_files": [str(alerts)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'sluice_ready{job="sluice-worker", instance="w1:9464"}', "values": "0x10"},
                {"series": 'sluice_ready{job="sluice-worker", instance="w2:9464"}', "values": "1x10"},
                {"series": 'sluice_ready{job="sluice-monitor", instance="m1:9466"}', "values": "0x10"},
            ],
            "alert_rule_test": [{
                "eval_time": "10m", "alertname": "SluiceWorkerNotReady",
                "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "instance": "w1:9464"},
                    "exp_annotations": {"summary": "worker w1:9464 has not held its partitions for 5 minutes"},
                }],
            }],
        }],
    }
    path = tmp_path / "worker_not_ready_test.yml"
    path.write_text(yaml.safe_dump(tests))
    proc = promtool("test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
