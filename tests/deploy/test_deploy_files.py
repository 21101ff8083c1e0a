"""What can be checked about the deployment files without a Docker engine.

The files must parse, name only CLI commands, flags and SLUICE_* variables
that Sluice really has, hand Feast a config it accepts, and agree with each
other: every service of stream/cli/services.py is deployed by both compose and
Kubernetes, with the same command, variables and port, and probes on the
paths and port the process serves (tests/stream/test_service_health.py and
tests/stream/test_metrics.py run the processes that serve them). Whether the
images build and the stack runs needs Docker and a cluster, and is not checked
here.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stream.cli.services import SCHEDULED, SERVICES
from stream.metrics import LIVENESS_PATH, METRICS_PATH, READINESS_PATH
from stream.settings import ENV, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
FEAST_REDIS = DEPLOY / "feature_store.redis.yaml"
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
METRICS_PORT = 9464


@functools.cache
def cli_help(subcommand: str | None = None) -> str:
    """`sluice [subcommand] --help`, as the installed command prints it."""
    argv = [subcommand, "--help"] if subcommand else ["--help"]
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", *argv], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@functools.cache
def cli_commands() -> frozenset[str]:
    """The subcommands `sluice --help` lists (its `{broker,worker,...}` choice)."""
    match = re.search(r"\{([\w,-]+)\}", cli_help())
    assert match, cli_help()
    return frozenset(match.group(1).split(","))


def stated_default(subcommand: str, flag: str) -> str:
    """The default `sluice <subcommand> --help` states for `flag` ("default 9466", "default: ...")."""
    text = " ".join(cli_help(subcommand).split())
    match = re.search(rf"(?<![\w-]){re.escape(flag)} \w+ (.*?)(?= --?\w|$)", text)
    assert match, f"`sluice {subcommand} --help` has no {flag}"
    default = re.search(r"\bdefault:? (\w+)", match.group(1))
    assert default, f"`sluice {subcommand} --help` states no default for {flag}: {match.group(1)!r}"
    return default.group(1)


@functools.cache
def feast_help(*subcommand: str) -> str:
    """`feast [subcommand] --help`, in-process (Feast's CLI is a click group)."""
    from click.testing import CliRunner
    from feast.cli.cli import cli

    result = CliRunner().invoke(cli, [*subcommand, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def flags(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if t.startswith("--")]


def in_help(flag: str, help_text: str) -> bool:
    """`flag` is listed as a whole option (so --view does not pass for --views)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def assert_flags_known(subcommand: str, tokens: list[str]) -> None:
    assert subcommand in cli_commands(), f"`sluice {subcommand}` is not a command"
    unknown = [f for f in flags(tokens) if not in_help(f, cli_help(subcommand))]
    assert not unknown, f"`sluice {subcommand}` does not accept {unknown}"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def k8s() -> list[dict]:
    return [d for path in K8S_FILES for d in yaml.safe_load_all(path.read_text()) if d]


def setup_script(compose: dict) -> str:
    """The setup service's shell script, as the shell sees it ($$ is compose's escape for $)."""
    command = compose["services"]["setup"]["command"]
    script = command if isinstance(command, str) else "\n".join(command)
    return script.replace("$$", "$")


# -- YAML ---------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, FEAST_REDIS, *K8S_FILES], ids=lambda p: p.name)
def test_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


# -- docker-compose.yml -------------------------------------------------------


def test_compose_services(compose):
    services = compose["services"]
    assert {"kafka", "redis", "setup", "worker"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["redis"]["image"].startswith("redis:")
    for name in ("kafka", "redis", "worker"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    # Every named volume a service mounts is declared.
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_kafka_is_single_node_kraft_with_plaintext_listener(compose):
    env = compose["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert str(env["KAFKA_CONTROLLER_QUORUM_VOTERS"]).startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "PLAINTEXT://:9092" in env["KAFKA_LISTENERS"].split(",")
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert protocols["PLAINTEXT"] == "PLAINTEXT"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in protocols
    assert "ZOOKEEPER" not in " ".join(env).upper()
    assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 1
    assert "kafka:9092" in " ".join(compose["services"]["kafka"]["healthcheck"]["test"])


def test_worker_starts_after_kafka_redis_and_setup(compose):
    deps = compose["services"]["worker"]["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"
    assert deps["setup"]["condition"] == "service_completed_successfully"
    assert compose["services"]["setup"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_worker_command_uses_only_real_flags(compose):
    worker = compose["services"]["worker"]
    command = worker["command"]
    tokens = shlex.split(command) if isinstance(command, str) else [str(t) for t in command]
    assert tokens[0] == "worker"
    assert tokens[tokens.index("--bootstrap-servers") + 1] == "kafka:9092"
    assert int(tokens[tokens.index("--metrics-port") + 1]) == METRICS_PORT
    assert_flags_known("worker", tokens[1:])
    # Every flag here takes a value.
    for i, token in enumerate(tokens[1:], start=1):
        if token.startswith("--") and "=" not in token:
            assert i + 1 < len(tokens) and not tokens[i + 1].startswith("--"), f"{token} has no value"


def test_worker_image_and_scaling(compose):
    worker = compose["services"]["worker"]
    dockerfile = worker["build"]["dockerfile"]
    assert (ROOT / worker["build"]["context"] / dockerfile).resolve() == DOCKERFILE
    assert compose["services"]["setup"]["image"] == worker["image"]
    assert worker["deploy"]["replicas"] >= 2
    assert worker["environment"]["SLUICE_APP_ID"]  # one consumer group for all replicas
    assert any(str(p).split(":")[-1] == str(METRICS_PORT) for p in worker["ports"])
    assert f"127.0.0.1:{METRICS_PORT}{READINESS_PATH}" in " ".join(worker["healthcheck"]["test"])


def test_setup_runs_existing_commands(compose):
    script = setup_script(compose)
    lines = [line.strip() for line in script.splitlines()]
    sluice_lines = [shlex.split(line) for line in lines if line.startswith("sluice ")]
    assert [t[1] for t in sluice_lines] == ["train"]
    for tokens in sluice_lines:
        assert_flags_known(tokens[1], tokens[2:])
    feast_lines = [shlex.split(line) for line in lines if line.startswith("feast ")]
    commands = [t[t.index("-c") + 2] for t in feast_lines]
    # `feast apply` on every run, also when data and model exist (the worker
    # refuses definitions changed after the last apply); materialize once.
    assert commands == ["apply", "apply", "materialize"]
    done_branch = script[: script.index("python - <<'PY'")]
    assert "feast -c /app/feature_repo apply" in done_branch and "exit 0" in done_branch
    assert in_help("--chdir", feast_help())
    for tokens in feast_lines:
        sub = tokens[tokens.index("-c") + 2]
        for flag in flags(tokens[tokens.index(sub) + 1 :]):
            assert in_help(flag, feast_help(sub)), f"`feast {sub}` does not accept {flag}"
    assert all(t[t.index("-c") + 1] == "/app/feature_repo" for t in feast_lines)


def test_setup_inline_python_compiles_and_imports(compose):
    script = setup_script(compose)
    match = re.search(r"<<'PY'\n(.*?)\nPY\n", script, re.S)
    assert match, "setup has no inline python"
    code = match.group(1)
    compile(code, "setup", "exec")
    for module, names in re.findall(r"^from ([\w.]+) import (.+)$", code, re.M):
        imported = __import__(module, fromlist=["_"])
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(imported, name), f"{module} has no {name}"


def test_setup_and_worker_share_repo_data_and_models(compose):
    setup, worker = compose["services"]["setup"], compose["services"]["worker"]
    for target in ("/app/feature_repo/data", "/models"):
        src_setup = [v.split(":")[0] for v in setup["volumes"] if v.split(":")[1] == target]
        src_worker = [v.split(":")[0] for v in worker["volumes"] if v.split(":")[1] == target]
        assert src_setup and src_setup == src_worker, target
    assert worker["environment"]["SLUICE_MODEL_DIR"] == "/models"
    assert worker["environment"]["SLUICE_REPO"] == "/app/feature_repo"


# -- SLUICE_* environment -----------------------------------------------------


def _sluice_vars(text: str) -> set[str]:
    return set(re.findall(r"\bSLUICE_[A-Z0-9_]+\b", text))


@pytest.mark.parametrize("path", [COMPOSE, *K8S_FILES, DOCKERFILE], ids=lambda p: p.name)
def test_sluice_env_vars_exist(path):
    used = _sluice_vars(path.read_text())
    if path in (COMPOSE, DOCKERFILE, DEPLOY / "k8s" / "common.yaml"):
        assert used, f"{path.name} sets no SLUICE_* variable"
    unknown = used - set(ENV.values())
    assert not unknown, f"{path.name} uses {sorted(unknown)}, which Sluice never reads"


def test_env_values_are_valid_settings(compose, k8s, monkeypatch):
    for env in (compose["services"]["worker"]["environment"], k8s_env(k8s, "worker")):
        for var in ENV.values():
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, str(value))
        settings = Settings.from_env()
        assert settings.metrics_port == METRICS_PORT
        # The endpoint listens on 127.0.0.1 unless told otherwise: containers must say so.
        assert settings.metrics_host == "0.0.0.0"
        assert settings.partitions >= 1
        assert settings.log_level in ("crit", "error", "warn", "info", "debug")
        assert settings.store.split("://")[0] in ("memory", "rocksdb")


# -- Feast config -------------------------------------------------------------


def test_feast_redis_config_is_valid(tmp_path):
    from feast.repo_config import RepoConfig, load_repo_config

    raw = yaml.safe_load(FEAST_REDIS.read_text())
    config = RepoConfig(**raw, repo_path=tmp_path)
    online = config.online_store  # validated on access
    assert type(online).__name__ == "RedisOnlineStoreConfig"
    assert online.connection_string.split(",")[0] == "redis:6379"

    demo = yaml.safe_load((ROOT / "feature_repo" / "feature_store.yaml").read_text())
    for key in ("project", "registry", "provider", "offline_store", "entity_key_serialization_version"):
        assert raw[key] == demo[key], key
    assert config.offline_store.type == "file"

    # The loader `feast` and FeatureStore use accepts the file as well.
    loaded = load_repo_config(tmp_path, FEAST_REDIS)
    assert loaded.online_store.connection_string == online.connection_string


def test_feast_redis_host_is_the_compose_service(compose):
    host, port = yaml.safe_load(FEAST_REDIS.read_text())["online_store"]["connection_string"].split(",")[0].split(":")
    assert host in compose["services"]
    assert compose["services"][host]["image"].startswith("redis:")
    assert port == "6379"


# -- Dockerfile ---------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile():
    steps = _instructions(DOCKERFILE.read_text())
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [arg for op, arg in steps if op == "RUN"]
    assert any(re.search(r'\bpip install "?\.(\[[\w,]+\])?"?(\s|$)', r) for r in runs)
    entrypoints = [arg for op, arg in steps if op == "ENTRYPOINT"]
    assert entrypoints and yaml.safe_load(entrypoints[-1]) == ["sluice"]
    assert 'sluice = "stream.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_dockerfile_copies_what_exists_and_is_not_ignored():
    steps = _instructions(DOCKERFILE.read_text())
    sources = []
    for op, arg in steps:
        if op == "COPY" and not arg.startswith("--from"):
            sources += arg.split()[:-1]
    assert sources
    # pip install . needs the readme pyproject.toml names.
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    if readme:
        assert readme.group(1) in sources
    patterns = [p.strip() for p in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    for src in sources:
        matches = list(ROOT.glob(src))
        assert matches, f"COPY {src}: nothing in the repository matches"
        # Last matching .dockerignore pattern wins; `!` re-includes.
        for path in matches:
            rel = path.relative_to(ROOT).as_posix()
            probe = f"{rel}/x.py" if path.is_dir() else rel
            included = True
            for pattern in patterns:
                negate = pattern.startswith("!")
                pat = pattern.lstrip("!")
                if fnmatch.fnmatch(probe, pat) or pat == "**":
                    included = negate
            assert included, f"COPY {src}: {rel} is excluded by Dockerfile.dockerignore"


# -- Kubernetes ---------------------------------------------------------------


def k8s_named(k8s: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in k8s if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def k8s_workload(k8s: list[dict], component: str) -> dict:
    """The Deployment or CronJob of a component (app.kubernetes.io/component)."""
    (doc,) = [
        d for d in k8s
        if d["kind"] in ("Deployment", "CronJob") and d["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    return doc


def pod_spec(workload: dict) -> dict:
    spec = workload["spec"]
    template = spec["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob" else spec["template"]
    return template


def k8s_container(k8s: list[dict], component: str) -> dict:
    (container,) = pod_spec(k8s_workload(k8s, component))["spec"]["containers"]
    return container


def k8s_env(k8s: list[dict], component: str) -> dict[str, str]:
    """The container's environment: its ConfigMaps (envFrom), then its own `env` entries."""
    container = k8s_container(k8s, component)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(k8s_named(k8s, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        assert set(entry) == {"name", "value"}, f"{component}: {entry} is not a plain value"
        env[entry["name"]] = entry["value"]
    return env


def compose_command(compose: dict, name: str) -> list[str]:
    command = compose["services"][name]["command"]
    return shlex.split(command) if isinstance(command, str) else [str(t) for t in command]


def compose_env(compose: dict, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in compose["services"][name]["environment"].items()}


DEPLOYED = [*SERVICES, *SCHEDULED]


def test_every_service_of_the_cli_is_deployed_by_compose_and_k8s(compose, k8s):
    assert set(SERVICES) == {"worker", "monitor", "rollout", "ui", "archive", "reasons", "label-join"} and set(SCHEDULED) == {"labeled-sink"}
    for name in DEPLOYED:
        assert name in compose["services"], f"docker-compose.yml does not run `sluice {name}`"
        assert compose_command(compose, name)[0] == name
        assert k8s_container(k8s, name)["args"][0] == name, f"deploy/k8s runs no `sluice {name}`"
    for name in SERVICES:
        assert k8s_workload(k8s, name)["kind"] == "Deployment"
    for name in SCHEDULED:
        assert k8s_workload(k8s, name)["kind"] == "CronJob"
    # And nothing else of Sluice runs in the cluster that the table does not know.
    components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in k8s if d["kind"] in ("Deployment", "CronJob")}
    assert components == set(DEPLOYED)


@pytest.mark.parametrize("name", DEPLOYED)
def test_commands_and_flags_are_real(compose, k8s, name):
    for where, tokens in (("compose", compose_command(compose, name)), ("k8s", k8s_container(k8s, name)["args"])):
        assert tokens[0] in cli_commands(), f"{where}: `sluice {tokens[0]}` is not a command"
        assert_flags_known(tokens[0], tokens[1:])
        # Every flag here takes a value.
        for i, token in enumerate(tokens[1:], start=1):
            if token.startswith("--") and "=" not in token:
                assert i + 1 < len(tokens) and not tokens[i + 1].startswith("--"), f"{where} {name}: {token} has no value"


@pytest.mark.parametrize("name", DEPLOYED)
def test_compose_and_k8s_agree(compose, k8s, name):
    """The same command, the same variables and the same port, whichever runs the service."""
    container = k8s_container(k8s, name)
    assert [str(t) for t in container["args"]] == compose_command(compose, name)
    assert k8s_env(k8s, name) == compose_env(compose, name)
    k8s_ports = sorted(p["containerPort"] for p in container.get("ports", []))
    compose_ports = sorted(int(str(p).split(":")[-1]) for p in compose["services"][name].get("ports", []))
    assert k8s_ports == compose_ports
    assert container["image"] == compose["services"][name]["image"]
    # Every variable either sets is one Sluice reads.
    assert set(compose_env(compose, name)) <= set(ENV.values())


@pytest.mark.parametrize("name", list(SERVICES))
def test_probes_are_on_the_port_and_paths_the_process_serves(compose, k8s, name):
    service = SERVICES[name]
    tokens = compose_command(compose, name)
    port = int(tokens[tokens.index(service.port_flag) + 1])
    # The port the command serves by default, as its --help states it, is the one deployed.
    assert port == service.port == int(stated_default(name, service.port_flag))
    container = k8s_container(k8s, name)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(named.values()) == [port]
    for probe, path in (("livenessProbe", LIVENESS_PATH), ("readinessProbe", READINESS_PATH)):
        check = container[probe]["httpGet"]
        assert check["path"] == path, f"{name} {probe}"
        assert named.get(check["port"], check["port"]) == port, f"{name} {probe}"
    healthcheck = " ".join(compose["services"][name]["healthcheck"]["test"])
    assert re.findall(r"127\.0\.0\.1:(\d+)(/\w+)", healthcheck) == [(str(port), READINESS_PATH)]
    # Reachable from outside the container: the metrics endpoints bind SLUICE_METRICS_HOST, the page --host.
    if service.port_flag == "--metrics-port":
        assert compose_env(compose, name)["SLUICE_METRICS_HOST"] == "0.0.0.0"
    else:
        assert tokens[tokens.index("--host") + 1] == "0.0.0.0"


@pytest.mark.parametrize("name", list(SERVICES))
def test_metrics_are_scraped_where_served(k8s, name):
    service = SERVICES[name]
    annotations = pod_spec(k8s_workload(k8s, name))["metadata"].get("annotations", {})
    if not service.metrics:
        assert annotations.get("prometheus.io/scrape", "false") == "false"
        return
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(service.port)
    assert annotations.get("prometheus.io/path", METRICS_PATH) == METRICS_PATH


def test_compose_prometheus_scrapes_every_service_with_metrics():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name, service in SERVICES.items():
        if service.metrics:
            (discovery,) = jobs[f"sluice-{name}"]["dns_sd_configs"]
            assert discovery["names"] == [name] and discovery["port"] == service.port


def test_k8s_prometheus_keeps_the_annotated_pods():
    """promtool here is built without Kubernetes discovery: the file is checked by reading it."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    relabel = {tuple(r["source_labels"]): r for r in job["relabel_configs"]}
    keep = relabel[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
    assert keep["action"] == "keep" and keep["regex"] == "true"
    assert relabel[("__meta_kubernetes_pod_annotation_prometheus_io_path",)]["target_label"] == "__metrics_path__"
    address = relabel[("__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port")]
    assert re.fullmatch(address["regex"], "10.0.0.7:8080;9466") and address["target_label"] == "__address__"
    # Jobs named as in the compose stack, which the alert rules select on.
    job_label = relabel[("__meta_kubernetes_pod_label_app_kubernetes_io_component",)]
    assert job_label["target_label"] == "job" and job_label["replacement"] == "sluice-$1"
    assert config["rule_files"] == ["alerts.yml"]


@pytest.mark.parametrize("name", DEPLOYED)
def test_resources(compose, k8s, name):
    resources = k8s_container(k8s, name)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]), name
    assert "memory" in resources["limits"], name
    compose_resources = compose["services"][name]["deploy"]["resources"]
    assert {"cpus", "memory"} <= set(compose_resources["reservations"]) and "memory" in compose_resources["limits"]


def test_k8s_worker(k8s):
    deployment = k8s_workload(k8s, "worker")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    template = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    container = k8s_container(k8s, "worker")
    env = k8s_env(k8s, "worker")
    assert int(env["SLUICE_METRICS_PORT"]) == METRICS_PORT
    assert all(isinstance(v, str) for d in k8s if d["kind"] == "ConfigMap" for v in d["data"].values())

    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["SLUICE_MODEL_DIR"] in mounts
    assert f"{env['SLUICE_REPO']}/data" in mounts


@pytest.mark.parametrize("name", DEPLOYED)
def test_k8s_selectors_claims_and_services(k8s, name):
    workload = k8s_workload(k8s, name)
    template = pod_spec(workload)
    if workload["kind"] == "Deployment":
        assert workload["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    claims = {v["persistentVolumeClaim"]["claimName"] for v in template["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    defined = {d["metadata"]["name"] for d in k8s if d["kind"] == "PersistentVolumeClaim"}
    assert claims <= defined, f"{name} mounts claims nobody defines: {claims - defined}"
    if name in SERVICES:
        # A Service of the compose name, so --metrics-url dns+http://<name>:port/metrics means the same in both.
        service = k8s_named(k8s, "Service", name)
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        assert [p["port"] for p in service["spec"]["ports"]] == [SERVICES[name].port]


def test_singletons_run_once(compose, k8s):
    """The rollout controller and the monitor are one per consumer group, the archive one per events topic: never two at once."""
    for name in ("monitor", "rollout", "archive"):
        spec = k8s_workload(k8s, name)["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
        assert compose["services"][name].get("deploy", {}).get("replicas", 1) == 1


def test_labeled_sink_runs_on_a_schedule(compose, k8s):
    """`sluice labeled-sink` reads until quiet, writes and exits: repeated, one run at a time, each bounded."""
    cron = k8s_workload(k8s, "labeled-sink")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    minutes = int(cron["schedule"].split()[0].removeprefix("*/"))
    assert 0 < cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] < minutes * 60
    sink = compose["services"]["labeled-sink"]
    entrypoint = sink["entrypoint"]
    assert entrypoint[:2] == ["sh", "-ec"] and f"sleep {minutes * 60}" in entrypoint[2]
    # The loop runs `sluice` with the service's command as its arguments ($$ is compose's escape for $).
    assert 'sluice "$$@"' in entrypoint[2]
    tokens = compose_command(compose, "labeled-sink")
    output = tokens[tokens.index("--output") + 1]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in sink["volumes"]}
    # The dataset is replaced by renaming a sibling directory: it must lie inside the volume, not be its mount point.
    assert str(Path(output).parent) in mounts and output not in mounts
    container = k8s_container(k8s, "labeled-sink")
    assert str(Path(output).parent) in {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}


def test_metrics_host_is_not_baked_into_the_image():
    # Whoever runs the image outside compose or Kubernetes keeps the loopback default.
    assert "SLUICE_METRICS_HOST" not in DOCKERFILE.read_text()


def test_health_checks_use_the_health_endpoints(compose, k8s):
    """Probes name paths the endpoint serves: /livez for liveness, /readyz for readiness (never a text match on /metrics)."""
    served = {METRICS_PATH, LIVENESS_PATH, READINESS_PATH}
    for name in SERVICES:
        healthcheck = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert "sluice_ready" not in healthcheck
        container = k8s_container(k8s, name)
        for probe in ("livenessProbe", "readinessProbe"):
            assert "exec" not in container[probe], probe
            assert container[probe]["httpGet"]["path"] in served


def test_deploying_is_documented(compose):
    """docs/operations.md says how to deploy, each service's variables and probes, and what was not run."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("## Deploying"):]
    section = section[: section.index("\n## ", 1)]
    for name in DEPLOYED:
        assert f"`sluice {name}`" in section, name
        for var in compose_env(compose, name):
            assert f"`{var}" in section, f"{name}: {var} is not documented in Deploying"
    for name, service in SERVICES.items():
        assert str(service.port) in section, name
    for needed in (LIVENESS_PATH, READINESS_PATH, "docker compose up", "kubectl apply -f deploy/k8s/", "What was not run"):
        assert needed in section, needed
