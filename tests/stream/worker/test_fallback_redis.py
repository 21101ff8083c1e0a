"""The online store taken away and given back, under a real worker: fallback, then recovery.

A Redis server of the test's own, on a free port, is Feast's online store.
Mid-stream it is shut down (saving its data) and later started again on the
same port. While it is away every event is still answered, by the declared
fallback chain (here: rules), and says why; once it is back, events are
scored by the model with their batch features again.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import yaml

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.feast import repo
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.control import publish
from stream.kafka.reader import read_topic
from stream.serving.deployment import Deployment
from tests.conftest import NOW

REDIS = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, port: int, data_dir):
        self.port, self.data_dir, self.proc = port, data_dir, None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Shut down, saving the data set (what a restart reads back)."""
        if self.proc is None:
            return
        import redis

        try:
            redis.Redis(port=self.port).shutdown(save=True)
        except redis.exceptions.ConnectionError:
            pass  # it closes the connection as it goes
        self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_repo(trained_repo, tmp_path, unique):
    if REDIS is None:
        if os.environ.get("SLUICE_REQUIRE_REDIS"):
            pytest.fail("redis-server is not installed, and SLUICE_REQUIRE_REDIS is set")
        pytest.skip("REDIS-SERVER NOT INSTALLED: the online-store outage was NOT tested (apt-get install redis-server)")
    server = RedisServer(_free_port(), tmp_path).start()
    path = tmp_path / "redis_repo"
    shutil.copytree(trained_repo["path"], path, ignore=shutil.ignore_patterns("registry.db", "online_store.db"))
    topic = unique("redis-txn")
    definitions = next(p for p in path.glob("*.py") if trained_repo["topic"] in p.read_text())
    definitions.write_text(definitions.read_text().replace(f'topic="{trained_repo["topic"]}"', f'topic="{topic}"'))
    config = yaml.safe_load((path / "feature_store.yaml").read_text())
    config["project"] = f"sluice_outage_{uuid.uuid4().hex[:8]}"
    config["online_store"] = {"type": "redis", "connection_string": f"127.0.0.1:{server.port}"}
    (path / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    repo.apply(path)
    repo.materialize(path, datetime(2000, 1, 1, tzinfo=UTC), NOW, views=["card_profile"])
    try:
        yield {**trained_repo, "path": path, "topic": topic, "redis": server}
    finally:
        server.stop()


def _produce(producer, topic, live) -> None:
    for payload in event_stream(live, seed=len(live)):
        producer.produce(topic, payload, orjson.loads(payload)["card_id"].encode())
    assert producer.flush(30) == 0


def _log(bootstrap, topic, n) -> dict:
    records = [orjson.loads(m.value()) for m in read_topic(bootstrap, topic, expect=n, timeout_s=120, idle_s=20)]
    assert len(records) >= n, f"{len(records)} of {n} predictions"
    return {r["transaction_id"]: r for r in records}


def test_fallback_engages_when_the_online_store_goes_and_recovers_when_it_returns(broker, redis_repo, start_worker, unique):
    bootstrap, server = broker.bootstrap_servers, redis_repo["redis"]
    env = {
        "SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog"),
        "SLUICE_DEPLOYMENTS_TOPIC": unique("deploy"), "SLUICE_MONITORING_TOPIC": unique("mon"),
        "SLUICE_BATCH_FEATURE_TTL_S": "0", "SLUICE_STORE_RETRY_S": "1",  # every batch asks the store
    }
    champion = redis_repo["result"].version
    rules = {"fallback": [{"name": "big_amount", "field": "amount", "above": 300, "decision": True}]}
    publish(bootstrap, env["SLUICE_DEPLOYMENTS_TOPIC"],
            Deployment(seq=1, champion=champion, fallback=("rules",), rules=rules, reason="test"))
    ensure_topics(bootstrap, [redis_repo["topic"]], 4)
    start_worker(redis_repo, env=env)
    live, _ = generate_transactions(redis_repo["world"], redis_repo["cfg"], NOW, NOW + timedelta(hours=24), id_prefix="F")
    phases = [live.iloc[:300], live.iloc[300:600], live.iloc[600:900]]
    producer = make_producer(bootstrap)
    log_topic = env["SLUICE_PREDICTION_LOG_TOPIC"]

    _produce(producer, redis_repo["topic"], phases[0])
    before = _log(bootstrap, log_topic, 300)
    server.stop()
    _produce(producer, redis_repo["topic"], phases[1])
    during = _log(bootstrap, log_topic, 600)
    server.start()
    time.sleep(2.0)  # past the breaker's retry time
    _produce(producer, redis_repo["topic"], phases[2])
    after = _log(bootstrap, log_topic, 900)

    assert len(after) == 900, "every event answered exactly once, store or no store"
    for i, ids in enumerate(p["transaction_id"] for p in phases):
        rows = [after[t] for t in ids]
        if i == 1:
            assert all(r["fallback"] == "online_store_unavailable" for r in rows)
            assert all(r["score"] is None and r["model_version"] is None for r in rows)
            assert all(r["rule"] in ("fallback:big_amount", "fallback_default") for r in rows)
            assert all(r["decision"] == (r["event"]["amount"] > 300) for r in rows)
            assert all(r["batch_missing"] == ["card_profile"] for r in rows)
        else:
            assert all(r["fallback"] is None and r["model_version"] == champion for r in rows), f"phase {i}"
            assert all(r["features"]["card_profile__credit_limit"] is not None for r in rows)
    assert set(before) <= set(during) <= set(after)
