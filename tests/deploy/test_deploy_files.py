"""What can be checked about the deployment files without a Docker engine.

The files must parse, name only CLI flags and SLUICE_* variables that Sluice
really has, hand Feast a config it accepts, and agree with each other (ports,
service names, paths). Whether the images build and the stack runs needs
Docker and is not checked here.
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

from stream.metrics import LIVENESS_PATH, METRICS_PATH, READINESS_PATH
from stream.settings import ENV, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
FEAST_REDIS = DEPLOY / "feature_store.redis.yaml"
K8S = DEPLOY / "k8s" / "worker.yaml"
METRICS_PORT = 9464


@functools.cache
def cli_help(subcommand: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", subcommand, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


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
    unknown = [f for f in flags(tokens) if not in_help(f, cli_help(subcommand))]
    assert not unknown, f"`sluice {subcommand}` does not accept {unknown}"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    return {d["kind"]: d for d in docs}


def setup_script(compose: dict) -> str:
    """The setup service's shell script, as the shell sees it ($$ is compose's escape for $)."""
    command = compose["services"]["setup"]["command"]
    script = command if isinstance(command, str) else "\n".join(command)
    return script.replace("$$", "$")


# -- YAML ---------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, FEAST_REDIS, K8S], ids=lambda p: p.name)
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


@pytest.mark.parametrize("path", [COMPOSE, K8S, DOCKERFILE], ids=lambda p: p.name)
def test_sluice_env_vars_exist(path):
    used = _sluice_vars(path.read_text())
    assert used, f"{path.name} sets no SLUICE_* variable"
    unknown = used - set(ENV.values())
    assert not unknown, f"{path.name} uses {sorted(unknown)}, which Sluice never reads"


def test_env_values_are_valid_settings(compose, k8s, monkeypatch):
    for env in (compose["services"]["worker"]["environment"], k8s["ConfigMap"]["data"]):
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


def test_k8s_worker(k8s):
    assert {"ConfigMap", "Deployment"} <= set(k8s)
    config_map, deployment = k8s["ConfigMap"], k8s["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    template = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == METRICS_PATH

    (container,) = template["spec"]["containers"]
    assert container["args"][0] == "worker"
    assert_flags_known("worker", container["args"][1:])
    assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in container["envFrom"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == METRICS_PORT == int(config_map["data"]["SLUICE_METRICS_PORT"])
    liveness, readiness = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert liveness["path"] == LIVENESS_PATH and liveness["port"] in ("metrics", METRICS_PORT)
    assert readiness["path"] == READINESS_PATH and readiness["port"] in ("metrics", METRICS_PORT)
    assert all(isinstance(v, str) for v in config_map["data"].values())

    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes
    claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
    if claims:  # a claim the Deployment mounts is defined alongside it
        assert claims == {k8s["PersistentVolumeClaim"]["metadata"]["name"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert config_map["data"]["SLUICE_MODEL_DIR"] in mounts
    assert f"{config_map['data']['SLUICE_REPO']}/data" in mounts


def test_metrics_host_is_set_explicitly_for_containers(compose, k8s):
    assert compose["services"]["worker"]["environment"]["SLUICE_METRICS_HOST"] == "0.0.0.0"
    assert k8s["ConfigMap"]["data"]["SLUICE_METRICS_HOST"] == "0.0.0.0"
    # Not baked into the image: whoever runs it outside compose or Kubernetes keeps the loopback default.
    assert "SLUICE_METRICS_HOST" not in DOCKERFILE.read_text()


def test_health_checks_use_the_health_endpoints(compose, k8s):
    """Probes name paths the endpoint serves: /livez for liveness, /readyz for readiness (never a text match on /metrics)."""
    served = {METRICS_PATH, LIVENESS_PATH, READINESS_PATH}
    healthcheck = " ".join(compose["services"]["worker"]["healthcheck"]["test"])
    assert re.findall(rf"127\.0\.0\.1:{METRICS_PORT}(/\w+)", healthcheck) == [READINESS_PATH]
    assert "sluice_ready" not in healthcheck
    (container,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert "exec" not in container[probe], probe
        assert container[probe]["httpGet"]["path"] in served
