"""The model directory as a store: the layout the worker reads, old directories, atomic files, concurrent writers."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest

from stream.registry import CHAMPION, LocalStore, open_store
from stream.registry.local import REGISTRY_FILE
from stream.registry.manage import NothingToRollBack, promote, rollback
from stream.serving.model import CHAMPION_FILE, META_FILE, load_model, resolve, save_model
from tests.stream.registry.conftest import FEATURES, meta_for


def test_the_champion_is_the_file_the_worker_reads_and_other_aliases_live_in_the_registry_file(tmp_path, boosters):
    store = open_store(tmp_path / "models")
    assert isinstance(store, LocalStore)
    a, b = (store.publish(bst, meta_for(i)) for i, bst in enumerate(boosters[:2]))
    promote(store, a)
    store.set_alias("challenger", b)
    assert (tmp_path / "models" / CHAMPION_FILE).read_text() == f"{a}\n"
    assert resolve(tmp_path / "models") == tmp_path / "models" / a
    assert load_model(tmp_path / "models", expected_features=FEATURES, check_in_child=False).version == a
    state = json.loads((tmp_path / "models" / REGISTRY_FILE).read_text())
    assert state["aliases"] == {"challenger": b}  # the champion is never duplicated there
    assert [m["new"] for m in state["history"]] == [a, b]
    # Only whole files: nothing written aside is left behind.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted([".registry.lock", CHAMPION_FILE, REGISTRY_FILE, a, b])


def test_a_directory_from_before_the_registry_is_a_store_whose_first_promotion_can_be_undone(tmp_path, boosters):
    models = tmp_path / "models"
    save_model(models, "v20260101-000000", boosters[0], {"features": list(FEATURES), "threshold": 0.4, "trained_at": "2026-01-01T00:00:00+00:00"})
    store = LocalStore(models)
    [info] = store.versions()
    assert (info.version, info.aliases, info.created_at) == ("v20260101-000000", (CHAMPION,), "2026-01-01T00:00:00+00:00")
    new = store.publish(boosters[1], meta_for(1))
    assert promote(store, new) == ("v20260101-000000", new)
    assert rollback(store) == (new, "v20260101-000000")
    assert resolve(models).name == "v20260101-000000"


def test_a_champion_changed_by_hand_is_not_rolled_back_blindly(tmp_path, boosters):
    store = LocalStore(tmp_path / "models")
    a, b, c = (store.publish(bst, meta_for(i)) for i, bst in enumerate(boosters))
    promote(store, a)
    promote(store, b)
    (tmp_path / "models" / CHAMPION_FILE).write_text(c + "\n")  # as save_model or an operator would
    with pytest.raises(NothingToRollBack, match="changed outside the registry"):
        rollback(store)
    assert store.aliases()[CHAMPION] == c


def test_a_version_still_being_written_is_not_listed(tmp_path, boosters):
    store = LocalStore(tmp_path / "models")
    a = store.publish(boosters[0], meta_for(0))
    (tmp_path / "models" / "v20990101-000000-00000000").mkdir()  # model.json comes last, so it is not there yet
    assert [v.version for v in store.versions()] == [a]


def test_concurrent_publishes_and_alias_moves_lose_nothing(tmp_path, boosters):
    store = LocalStore(tmp_path / "models")
    now = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
    ids, errors = [], []

    def publish_one():
        try:
            ids.append(LocalStore(tmp_path / "models").publish(boosters[0], meta_for(0), now=now))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=publish_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(ids)) == 6  # one second, one model: six ids (v...-sha, v...-sha-2, ...)
    assert all((tmp_path / "models" / v / META_FILE).is_file() for v in ids)

    def move(alias: str):
        other = LocalStore(tmp_path / "models")
        for v in ids * 2:
            other.set_alias(alias, v)

    movers = [threading.Thread(target=move, args=(alias,)) for alias in ("challenger", "shadow-a", "shadow-b")]
    for t in movers:
        t.start()
    for t in movers:
        t.join()
    history = store.history()
    assert len(history) == 3 * 12  # every move recorded: no read-modify-write lost another's
    assert {m["alias"] for m in history} == {"challenger", "shadow-a", "shadow-b"}
    assert store.aliases() == {"challenger": ids[-1], "shadow-a": ids[-1], "shadow-b": ids[-1]}


def test_a_model_folder_publishes_with_its_own_metadata(tmp_path, boosters):
    source = LocalStore(tmp_path / "a")
    v = source.publish(boosters[0], meta_for(0, reference={"rows": 1}))
    copy = LocalStore(tmp_path / "b").publish(source.folder(v), {"trigger": "copied"})
    meta = LocalStore(tmp_path / "b").meta(copy)
    assert meta["reference"] == {"rows": 1} and meta["trigger"] == "copied" and meta["sha256"] == source.meta(v)["sha256"]
    assert (LocalStore(tmp_path / "b").folder(copy) / "model.txt").read_bytes() == (source.folder(v) / "model.txt").read_bytes()
