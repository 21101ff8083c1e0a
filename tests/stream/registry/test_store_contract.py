"""What both model stores promise, run against each: a model directory and a real MLflow registry (SQLite)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from stream.registry import CHALLENGER, CHAMPION, ModelNotFound, RegistryError, VersionRetired
from stream.registry.manage import NothingToRollBack, diff, promote, retire, rollback, show
from stream.serving.model import META_FILE, MODEL_FILE, load_model
from tests.stream.registry.conftest import FEATURES, meta_for

KINDS = ["local", "mlflow"]


@pytest.fixture(params=KINDS)
def store(request, make_store):
    return make_store(request.param)


def three(store, boosters) -> list[str]:
    return [store.publish(b, meta_for(i)) for i, b in enumerate(boosters)]


def test_a_published_version_is_a_local_folder_that_load_model_verifies(store, boosters):
    version = store.publish(boosters[0], meta_for(0))
    text = boosters[0].model_to_string().encode()
    sha = hashlib.sha256(text).hexdigest()
    assert version.startswith(f"v{datetime.now(tz=UTC):%Y%m%d}-") and version.endswith(sha[:8])
    folder = store.folder(version)
    assert (folder / MODEL_FILE).read_bytes() == text
    model = load_model(folder, expected_features=FEATURES, check_in_child=False)
    assert model.version == version and model.threshold == 0.5
    meta = store.meta(version)
    assert meta["sha256"] == sha and meta["features"] == list(FEATURES) and meta["trigger"] == "test"
    [info] = store.versions()
    assert (info.version, info.status, info.aliases, info.auc, info.threshold) == (version, "active", (), 0.9, 0.5)


def test_the_same_model_published_twice_in_one_second_gets_two_ids(store, boosters):
    now = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
    first = store.publish(boosters[0], meta_for(0), now=now)
    second = store.publish(boosters[0], meta_for(0, trigger="again"), now=now)
    assert second == f"{first}-2"
    assert store.meta(second)["trigger"] == "again" and store.meta(first)["trigger"] == "test"
    with pytest.raises(RegistryError, match="immutable"):
        store.publish(boosters[1], meta_for(1), version=first)


def test_metadata_whose_features_are_not_the_models_is_refused(store, boosters):
    with pytest.raises(RegistryError, match="feature names"):
        store.publish(boosters[0], meta_for(0, features=["a", "b", "d", "c"]))
    assert store.versions() == []


def test_aliases_move_and_every_move_is_recorded(store, boosters):
    a, b, _ = three(store, boosters)
    assert store.set_alias(CHAMPION, a, reason="first") is None
    assert store.set_alias(CHALLENGER, b) is None
    assert store.aliases() == {CHAMPION: a, CHALLENGER: b}
    assert store.set_alias(CHAMPION, b, kind="promote") == a
    assert store.set_alias(CHAMPION, b) == b  # no move: nothing recorded
    moves = [(m["alias"], m["old"], m["new"], m["kind"]) for m in store.history()]
    assert moves == [(CHAMPION, None, a, "set"), (CHALLENGER, None, b, "set"), (CHAMPION, a, b, "promote")]
    assert store.history()[0]["reason"] == "first"
    assert store.resolve(CHAMPION) == b and store.resolve(a) == a
    assert {v.version: v.aliases for v in store.versions()}[b] == (CHALLENGER, CHAMPION)


def test_rollback_undoes_promotions_one_by_one_and_says_when_there_is_nothing_left(store, boosters):
    a, b, c = three(store, boosters)
    assert promote(store, a) == (None, a)
    assert promote(store, b) == (a, b)
    assert promote(store, c) == (b, c)
    assert rollback(store, reason="bad canary") == (c, b)
    assert rollback(store) == (b, a)
    with pytest.raises(NothingToRollBack, match=f"champion {a} has no earlier champion"):
        rollback(store)
    assert store.aliases()[CHAMPION] == a
    # A promotion after rollbacks is undone first.
    assert promote(store, c) == (a, c)
    assert rollback(store) == (c, a)
    assert store.history()[-1]["kind"] == "rollback"


def test_promoting_the_challenger_clears_its_challenger_alias(store, boosters):
    a, b, _ = three(store, boosters)
    promote(store, a)
    store.set_alias(CHALLENGER, b)
    assert promote(store, CHALLENGER) == (a, b)  # an alias names the version too
    assert store.aliases() == {CHAMPION: b}


def test_a_retired_version_gets_no_alias_and_the_champion_cannot_be_retired(store, boosters):
    a, b, c = three(store, boosters)
    promote(store, a)
    store.set_alias(CHALLENGER, b)
    with pytest.raises(RegistryError, match="is the champion"):
        retire(store, a)
    assert retire(store, b) == b
    assert CHALLENGER not in store.aliases()  # a retired version keeps no alias
    assert {v.version: v.status for v in store.versions()} == {a: "active", b: "retired", c: "active"}
    for attempt in (lambda: promote(store, b), lambda: store.set_alias(CHALLENGER, b)):
        with pytest.raises(VersionRetired, match=f"{b} is retired"):
            attempt()
    # Nor does a rollback bring a retired version back.
    promote(store, c)
    retire(store, a)
    with pytest.raises(VersionRetired):
        rollback(store)
    assert store.aliases()[CHAMPION] == c
    assert load_model(store.folder(b), check_in_child=False).version == b  # its files stay


def test_unknown_versions_and_aliases_name_what_is_missing(store, boosters):
    store.publish(boosters[0], meta_for(0))
    with pytest.raises(ModelNotFound) as err:
        store.meta("v19990101-000000-deadbeef")
    assert err.value.version == "v19990101-000000-deadbeef" and "sluice models list" in str(err.value)
    with pytest.raises(ModelNotFound):
        promote(store, CHAMPION)  # no champion yet: the alias names nothing
    with pytest.raises(RegistryError, match="not a version id"):
        store.folder("../../etc")
    with pytest.raises(RegistryError, match="cannot be deleted"):
        store.delete_alias(CHAMPION)


def test_show_and_diff_say_what_a_version_is_and_what_differs(store, boosters):
    a = store.publish(boosters[0], meta_for(0, reference={"rows": 10, "contributions": {"a": 0.5, "b": 0.1},
                                                           "contribution_rank": ["a", "b"]}))
    b = store.publish(boosters[1], meta_for(1))
    promote(store, a)
    shown = show(store, CHAMPION)
    assert shown["version"] == a and shown["aliases"] == [CHAMPION] and shown["status"] == "active"
    assert shown["top_contributions"] == [["a", 0.5], ["b", 0.1]] and "reference" not in shown
    changes = diff(store, a, b)["changes"]
    assert changes["threshold"] == [0.5, 0.51]
    assert changes["metrics.auc"] == [0.9, 0.89]
    assert changes["params.trees"] == [8, 9]
    assert "params.num_leaves" not in changes and "feature_service" not in changes
    assert META_FILE == "model.json"
