"""Kafka client security: settings -> librdkafka config and Faust credentials, and TLS for real.

TLS runs through stunnel in front of a broker of its own, which advertises
the stunnel port (the embedded broker speaks plaintext only; a broker that
advertised its own port would send every client there after the first
metadata request). The certificates are made with openssl in the test's
temp dir. SASL cannot be exercised here: the embedded broker (Tansu) has no
SASL; only the configuration it produces is checked.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from features.errors import SluiceError
from stream.kafka import clients as kafka
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.kafka.reader import read_topic
from stream.kafka.security import librdkafka_config, redacted
from stream.worker.credentials import faust_credentials
from stream.settings import Settings, SettingsError

PASSWORD = "pw-" + uuid.uuid4().hex  # unique, so finding it anywhere means it leaked


def sasl_settings(**changes) -> Settings:
    base = dict(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="sluice", sasl_password=PASSWORD
    )
    return Settings(**{**base, **changes})


# -- Settings -> client configuration -------------------------------------------


def test_plaintext_adds_nothing():
    assert librdkafka_config(Settings()) == {}
    assert faust_credentials(Settings()) is None


def test_ssl_with_a_ca_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here")
    assert librdkafka_config(Settings(security_protocol="SSL", ssl_ca_file=str(ca))) == {
        "security.protocol": "SSL",
        "ssl.ca.location": str(ca),
    }
    # Without a CA file: the system's store.
    assert librdkafka_config(Settings(security_protocol="ssl"))["ssl.ca.location"] == "probe"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl(mechanism):
    config = librdkafka_config(sasl_settings(sasl_mechanism=mechanism))
    assert config == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "probe",
        "sasl.mechanism": mechanism,
        "sasl.username": "sluice",
        "sasl.password": PASSWORD,
    }
    assert redacted(config)["sasl.password"] == "***"


def test_faust_credentials():
    import ssl

    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    creds = faust_credentials(sasl_settings())
    assert isinstance(creds, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds)  # what Faust hands to aiokafka
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "sluice" and auth["sasl_plain_password"] == PASSWORD
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED and auth["ssl_context"].check_hostname
    assert PASSWORD not in repr(creds)

    plain = credentials_to_aiokafka_auth(faust_credentials(sasl_settings(security_protocol="SASL_PLAINTEXT")))
    assert plain["security_protocol"] == "SASL_PLAINTEXT" and plain["ssl_context"] is None

    tls = credentials_to_aiokafka_auth(faust_credentials(Settings(security_protocol="SSL")))
    assert tls["security_protocol"] == "SSL" and tls["ssl_context"].verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"security_protocol": "TLS"}, "SLUICE_SECURITY_PROTOCOL"),
        ({"sasl_mechanism": None}, "SLUICE_SASL_MECHANISM"),
        ({"sasl_mechanism": "GSSAPI"}, "SLUICE_SASL_MECHANISM"),
        ({"sasl_password": None}, "SLUICE_SASL_PASSWORD"),
        ({"sasl_username": None}, "SLUICE_SASL_USERNAME"),
        ({"security_protocol": "SSL"}, "SASL_SSL"),  # credentials given, but a protocol that sends none
        ({"security_protocol": "SSL", "sasl_mechanism": None, "sasl_username": None, "sasl_password": None,
          "ssl_ca_file": "/nonexistent/ca.pem"}, "SLUICE_SSL_CA_FILE"),
        ({"security_protocol": "PLAINTEXT", "sasl_mechanism": None, "sasl_username": None, "sasl_password": None,
          "ssl_ca_file": __file__}, "SLUICE_SSL_CA_FILE"),
    ],
)
def test_inconsistent_settings_name_the_variable(changes, names):
    settings = sasl_settings(**changes)
    with pytest.raises(SettingsError, match=names) as info:
        librdkafka_config(settings)
    assert PASSWORD not in str(info.value)
    with pytest.raises(SettingsError, match=names):
        faust_credentials(settings)


def test_the_password_is_not_in_the_settings_repr(monkeypatch):
    monkeypatch.setenv("SLUICE_SASL_PASSWORD", PASSWORD)
    settings = Settings.from_env()
    assert settings.sasl_password == PASSWORD
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)


def test_clients_get_the_configured_security(monkeypatch, tmp_path):
    for var in ("SLUICE_SECURITY_PROTOCOL", "SLUICE_SASL_MECHANISM", "SLUICE_SASL_USERNAME", "SLUICE_SASL_PASSWORD",
                "SLUICE_SSL_CA_FILE"):
        monkeypatch.delenv(var, raising=False)
    assert "security.protocol" not in kafka.client_config("h:1")
    # From the environment, until configure() is called ...
    monkeypatch.setenv("SLUICE_SECURITY_PROTOCOL", "SSL")
    assert kafka.client_config("h:1", **{"group.id": "g"}) == {
        "bootstrap.servers": "h:1", "log_level": 3, "security.protocol": "SSL", "ssl.ca.location": "probe", "group.id": "g",
    }
    # ... and from the settings given to configure() afterwards.
    try:
        kafka.configure(sasl_settings(security_protocol="SASL_PLAINTEXT"))
        assert kafka.client_config("h:1")["sasl.password"] == PASSWORD
        assert kafka.client_config("h:1")["security.protocol"] == "SASL_PLAINTEXT"
    finally:
        kafka.configure(None)
    assert kafka.client_config("h:1")["security.protocol"] == "SSL"


def test_the_worker_never_logs_the_password(broker, trained_repo, tmp_path):
    """A worker given SASL credentials, at debug level, against a broker that has no SASL: it stops, and says so without the password."""
    env = dict(
        os.environ,
        SLUICE_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        SLUICE_SASL_MECHANISM="SCRAM-SHA-256",
        SLUICE_SASL_USERNAME="sluice",
        SLUICE_SASL_PASSWORD=PASSWORD,
        PYTHONWARNINGS="ignore",
    )
    proc = subprocess.run(
        [
            sys.executable, "-m", "stream.cli", "worker",
            "--bootstrap-servers", broker.bootstrap_servers,
            "--repo", str(trained_repo["path"]),
            "--model-dir", str(trained_repo["model_dir"]),
            "--metrics-port", "0",
            "--log-level", "debug",
        ],
        capture_output=True, text=True, timeout=180, env=env,
    )
    output = proc.stdout + proc.stderr
    assert PASSWORD not in output
    assert proc.returncode == 2, output[-3000:]
    assert "sluice: error: cannot reach Kafka" in proc.stderr and "SASL_PLAINTEXT" in proc.stderr


# -- TLS for real: stunnel in front of a broker that advertises the TLS port -----


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(
            f"!!! TLS TEST NOT RUN: `{tool}` is not installed (apt-get install -y stunnel4 openssl); "
            "Kafka over TLS is untested in this run !!!"
        )
    return path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 / localhost signed by it; (ca, cert, key)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=sluice-test-ca", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=folder)
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stunnel exited with code {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"stunnel does not listen on {port}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """A broker reachable only through TLS (stunnel): yields (bootstrap servers, CA file)."""
    stunnel = _need("stunnel4") if shutil.which("stunnel4") else _need("stunnel")
    _need("openssl")
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_certificates(folder)
    tls_port = free_port()
    broker = EmbeddedBroker(advertised_port=tls_port, log_path=folder / "broker.log")
    log = folder / "stunnel.log"
    (folder / "stunnel.conf").write_text(
        "foreground = yes\n"
        f"pid =\n"
        f"output = {log}\n"
        "debug = 4\n"
        "[kafka]\n"
        f"accept = 127.0.0.1:{tls_port}\n"
        f"connect = {broker.bootstrap_servers}\n"
        f"cert = {cert}\n"
        f"key = {key}\n"
    )
    proxy = subprocess.Popen(
        [stunnel, str(folder / "stunnel.conf")], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_listening(tls_port, proxy, log)
        broker.start()
        yield f"127.0.0.1:{tls_port}", ca
    finally:
        broker.stop()
        proxy.terminate()
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


@pytest.fixture
def tls_client(tls_broker):
    bootstrap, ca = tls_broker
    kafka.configure(Settings(security_protocol="SSL", ssl_ca_file=str(ca)))
    yield bootstrap, ca
    kafka.configure(None)


def test_produce_and_read_over_tls(tls_client):
    bootstrap, _ = tls_client
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics(bootstrap, [topic], 2)
    assert kafka.topic_partitions(bootstrap, topic) == 2
    producer = kafka.make_producer(bootstrap)
    for i in range(20):
        producer.produce(topic, f"v{i}".encode(), f"k{i}".encode())
    assert producer.flush(30) == 0
    values = sorted(m.value().decode() for m in read_topic(bootstrap, topic, expect=20, timeout_s=30))
    assert values == sorted(f"v{i}" for i in range(20))


def test_tls_really_is_required_and_verified(tls_broker):
    bootstrap, _ = tls_broker
    try:
        # Plaintext to the TLS port: no answer a Kafka client can use.
        kafka.configure(Settings())
        with pytest.raises(SluiceError, match="cannot reach Kafka"):
            kafka.topic_partitions(bootstrap, "anything", timeout_s=3)
        # TLS against the system's CA store: the test CA is not in it, so the broker is not trusted.
        kafka.configure(Settings(security_protocol="SSL"))
        with pytest.raises(SluiceError, match="cannot reach Kafka at .* over SSL"):
            kafka.topic_partitions(bootstrap, "anything", timeout_s=3)
    finally:
        kafka.configure(None)


def test_a_worker_predicts_over_tls(tls_client, own_topic_repo, tmp_path):
    """`sluice worker` with SLUICE_SECURITY_PROTOCOL=SSL: Faust's consumer and producer, the delivery producer
    and the admin calls all go through TLS (the broker advertises only the TLS port)."""
    import orjson

    from fraud_demo.arrivals import event_stream
    from fraud_demo.generator import generate_transactions
    from stream.tools.process import worker_process
    from tests.conftest import NOW

    bootstrap, ca = tls_client
    app_id = f"tls-{uuid.uuid4().hex[:8]}"
    topics = {"SLUICE_PREDICTIONS_TOPIC": f"{app_id}.predictions", "SLUICE_PREDICTION_LOG_TOPIC": f"{app_id}.log"}
    env = {"SLUICE_SECURITY_PROTOCOL": "SSL", "SLUICE_SSL_CA_FILE": str(ca), **topics}
    kafka.ensure_topics(bootstrap, [own_topic_repo["topic"]], 2)
    proc = worker_process(
        bootstrap, own_topic_repo["path"], own_topic_repo["model_dir"], tmp_path, "worker", app_id=app_id, partitions=2,
        env=env,
    )
    try:
        proc.start().wait_ready(timeout_s=120)
        live, _ = generate_transactions(own_topic_repo["world"], own_topic_repo["cfg"], NOW, NOW + timedelta(hours=2), id_prefix="tls")
        live = live.iloc[:40]
        assert len(live) >= 10
        producer = kafka.make_producer(bootstrap)
        for payload in event_stream(live, disorder_ms=0, seed=1):
            event = orjson.loads(payload)
            producer.produce(own_topic_repo["topic"], payload, str(event["card_id"]).encode())
        assert producer.flush(30) == 0
        predictions = list(read_topic(bootstrap, topics["SLUICE_PREDICTIONS_TOPIC"], expect=len(live), timeout_s=90, idle_s=30))
        assert {m.key().decode() for m in predictions} == set(live["transaction_id"])
    finally:
        proc.stop()
    assert "Traceback" not in (tmp_path / "worker.log").read_text()
