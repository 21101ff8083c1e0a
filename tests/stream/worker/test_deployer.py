"""A starting worker applies the deployment the running ones serve; a bad record never replaces a good one."""

from __future__ import annotations

import shutil
import time

import orjson
import pytest

from stream.kafka.control import publish
from stream.kafka.reader import read_topic
from stream.serving.deployment import Deployment
from stream.settings import Settings
from stream.worker.deployments import Deployer


@pytest.fixture
def versions(model_versions):
    """Two good versions and a corrupt one ("v-bad": its model.txt is not a model)."""
    models, v1, v2 = model_versions
    bad = models / "v-bad"
    shutil.copytree(models / v1, bad)
    (bad / "model.txt").write_bytes(b"tree\nnot a model\n")
    return models, v1, v2


def _settings(broker, models, unique) -> Settings:
    return Settings(bootstrap_servers=broker.bootstrap_servers, model_dir=models,
                    deployments_topic=unique("deploy"), monitoring_topic=unique("mon"))


def test_a_starting_worker_applies_the_newest_deployment_that_loads(broker, versions, make_engine, unique):
    models, v1, v2 = versions
    settings = _settings(broker, models, unique)
    publish(broker.bootstrap_servers, settings.deployments_topic, Deployment(seq=1, champion=v1, mode="shadow", challengers=(v2,)))
    publish(broker.bootstrap_servers, settings.deployments_topic, Deployment(seq=2, champion="v-bad"))
    engine = make_engine()
    deployer = Deployer(engine, settings)
    deployer.start()
    try:
        # The running workers refused seq 2 as well: the newest that loads is seq 1.
        assert engine.serving.deployment.seq == 1 and set(engine.serving.models) == {v1, v2}
        assert deployer.refused == [(2, "v-bad")]
        # Then it follows the topic: a good record switches it, a bad one is refused with an alert.
        publish(broker.bootstrap_servers, settings.deployments_topic, Deployment(seq=3, champion=v2))
        deadline = time.monotonic() + 30
        while engine.serving.deployment.seq != 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert engine.serving.deployment.seq == 3 and engine.serving.champion.version == v2
        publish(broker.bootstrap_servers, settings.deployments_topic, Deployment(seq=4, champion=v1, fallback=("v-bad",)))
        deadline = time.monotonic() + 30
        while len(deployer.refused) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert deployer.refused[-1] == (4, "v-bad") and engine.serving.deployment.seq == 3
    finally:
        deployer.stop()
    alerts = [orjson.loads(m.value()) for m in read_topic(broker.bootstrap_servers, settings.monitoring_topic, idle_s=2)]
    assert [(a["kind"], a["deployment_seq"], a["serving_seq"]) for a in alerts] == [
        ("model_load_failed", 2, 0), ("model_load_failed", 4, 3)]  # seq 2 was tried first, before seq 1 applied


def test_a_starting_worker_reads_the_topic_to_its_end_not_until_it_goes_quiet(broker, unique):
    # The start-up read stops at the end the topic had when it began: a record
    # written while it reads is left to the follower. A read that waits for a
    # quiet second (what it did before, a second of every restart) sees it.
    from stream.kafka.control import Follower

    topic = unique("deploy")
    for seq in (1, 2):
        publish(broker.bootstrap_servers, topic, Deployment(seq=seq, champion="v1"))
    follower = Follower(broker.bootstrap_servers, topic, Deployment.from_json)
    seen: list[int] = []

    def apply(record: Deployment) -> None:
        seen.append(record.seq)
        if record.seq == 1:  # on the broker before the read goes on
            publish(broker.bootstrap_servers, topic, Deployment(seq=3, champion="v1"))

    try:
        assert follower.catch_up(apply, timeout_s=60) == 2
        assert seen == [1, 2]
        # An empty topic: nothing to read, nothing to wait for.
        empty = Follower(broker.bootstrap_servers, unique("deploy"), Deployment.from_json)
        assert empty.catch_up(seen.append, timeout_s=60) == 0
        empty.close()
        # The follower then goes on from where the catch-up stopped.
        assert follower.read(lambda r: seen.append(r.seq), idle_s=1.0, timeout_s=30) == 1 and seen == [1, 2, 3]
    finally:
        follower.close()
