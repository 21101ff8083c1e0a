"""Batch features through a real Redis online store, as in production.

Needs a Redis server on 127.0.0.1:6379 (no password; SLUICE_TEST_REDIS=host:port
names another). When nothing answers there the test is skipped, with a reason
in capitals in pytest's summary; with SLUICE_REQUIRE_REDIS=1 (set by .ci/run)
it fails instead, so CI never passes without having tested Redis. Every run
uses its own Feast project name, so its keys
(Feast suffixes each Redis key with the project) never meet another run's, and
all of them are removed at the end.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import yaml

from features.feast_repo import load_plan, open_store
from fraud_demo.generator import DemoConfig, generate_transactions, make_world, write_repo_data
from stream.feast import repo
from stream.feast.online_read import BatchFeatureCache
from tests.conftest import NOW

#: SLUICE_TEST_REDIS=host:port points the test at another server.
REDIS_HOST, _, _port = os.environ.get("SLUICE_TEST_REDIS", "127.0.0.1:6379").rpartition(":")
REDIS_PORT = int(_port)
PROFILE_FEATURES = ("account_age_days", "credit_limit", "is_premium")


def _redis_listening() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def _redis_required() -> bool:
    return os.environ.get("SLUICE_REQUIRE_REDIS", "").strip().lower() in ("1", "true", "yes", "on")


def _unreachable() -> str:
    return (
        f"REDIS NOT REACHABLE at {REDIS_HOST}:{REDIS_PORT}: the Redis online-store path was NOT tested "
        f"(start one: redis-server --bind {REDIS_HOST} --port {REDIS_PORT}; .ci/run does, and sets SLUICE_REQUIRE_REDIS=1 "
        "so that there this fails instead of skipping)"
    )


def _project_keys(client, project: str) -> list[bytes]:
    # Feast's Redis keys are <serialized entity key><project>.
    return list(client.scan_iter(match=b"*" + project.encode(), count=1000))


@pytest.fixture
def redis_repo(tmp_path, demo_repo_copy):
    if not _redis_listening():
        if _redis_required():
            pytest.fail(f"{_unreachable()}; SLUICE_REQUIRE_REDIS is set, so a missing Redis is a failure")
        pytest.skip(_unreachable())
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    project = f"sluice_test_{uuid.uuid4().hex[:12]}"
    assert _project_keys(client, project) == []

    path = demo_repo_copy(tmp_path / "feature_repo", f"txn-{uuid.uuid4().hex[:8]}")
    config = yaml.safe_load((path / "feature_store.yaml").read_text())
    config["project"] = project
    config["online_store"] = {"type": "redis", "connection_string": f"{REDIS_HOST}:{REDIS_PORT}"}
    (path / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    cfg = DemoConfig(seed=5, n_cards=50, n_merchants=20)
    world = make_world(cfg)
    history, labels = generate_transactions(world, cfg, NOW - timedelta(days=2), NOW, id_prefix="h")
    write_repo_data(path, world, history, labels)
    try:
        repo.apply(path)
        repo.materialize(path, datetime(2000, 1, 1, tzinfo=UTC), NOW, views=["card_profile"])
        yield {"path": path, "project": project, "world": world, "client": client}
    finally:
        try:
            open_store(path).teardown()  # `feast teardown`, without a second interpreter
        finally:
            # Whatever teardown left (or everything, if it failed) goes too.
            leftover = _project_keys(client, project)
            if leftover:
                client.delete(*leftover)
            remaining = _project_keys(client, project)
            client.close()
            assert remaining == [], f"{len(remaining)} Redis keys of {project} left behind"


def test_batch_features_come_from_redis(redis_repo):
    path, world, client = redis_repo["path"], redis_repo["world"], redis_repo["client"]
    # materialize really wrote to Redis: one hash per card, under this project.
    assert len(_project_keys(client, redis_repo["project"])) == len(world.cards)

    store = open_store(path)
    assert store.config.online_store.type == "redis"
    plan = load_plan(store)
    (view,) = plan.batch_views
    assert view.name == "card_profile"
    assert view.join_keys == ("card_id",)
    assert view.features == PROFILE_FEATURES

    cards = world.cards.set_index("card_id")
    known = list(cards.index[[0, 7, 19, 33, 49]])
    keys = [(c,) for c in known] + [("card-does-not-exist",)]

    cache = BatchFeatureCache(store, plan.batch_views, ttl_s=3600)
    expiring = BatchFeatureCache(store, plan.batch_views, ttl_s=0)
    rows = cache.lookup(view, keys)
    assert rows.shape == (len(keys), len(PROFILE_FEATURES))
    expected = cards.loc[known, list(PROFILE_FEATURES)].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(rows[: len(known)], expected)
    assert all(math.isnan(v) for v in rows[-1])
    assert (cache.lookups, cache.misses) == (len(keys), len(keys))
    np.testing.assert_array_equal(expiring.lookup(view, keys[:3]), rows[:3])
    assert expiring.misses == 3

    # Change one card in Redis. A fresh cache entry keeps serving the value it
    # holds, without asking Redis; an expired one is fetched again.
    changed = known[1]
    update = world.cards[world.cards["card_id"] == changed].copy()
    update["credit_limit"] = update["credit_limit"] + 12345.0
    update["event_timestamp"] = NOW
    store.write_to_online_store("card_profile", update)
    new_limit = cards.loc[changed, "credit_limit"] + 12345.0

    again = cache.lookup(view, keys[:3])
    assert cache.misses == len(keys)  # all three were cache hits
    assert cache.lookups == len(keys) + 3
    np.testing.assert_array_equal(again, rows[:3])

    time.sleep(0.01)  # every entry of `expiring` is now older than ttl_s=0
    refetched = expiring.lookup(view, keys[:3])
    assert expiring.misses == 6
    limit = PROFILE_FEATURES.index("credit_limit")
    assert refetched[1, limit] == new_limit
    np.testing.assert_array_equal(np.delete(refetched, limit, axis=1), np.delete(rows[:3], limit, axis=1))
    np.testing.assert_array_equal(refetched[[0, 2]], rows[[0, 2]])
