"""The MLflow backend against a real MLflow Model Registry on SQLite: what MLflow itself then holds."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from mlflow import MlflowClient

from stream.registry import CHALLENGER, CHAMPION, RegistryError, open_store
from stream.registry.manage import promote, retire, rollback
from stream.registry.mlflow_store import MlflowStore
from stream.serving.model import MODEL_FILE, load_model
from tests.stream.registry.conftest import FEATURES, meta_for


@pytest.fixture
def client(mlflow_uri):
    return MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)


def fresh(mlflow_uri, **kw) -> MlflowStore:
    store = open_store(f"mlflow:{mlflow_uri}", name=f"m-{uuid.uuid4().hex[:8]}", **kw)
    assert isinstance(store, MlflowStore)
    return store


def test_a_version_is_a_registered_model_version_with_its_files_as_run_artifacts(mlflow_uri, client, boosters, tmp_path):
    store = fresh(mlflow_uri)
    v = store.publish(boosters[0], meta_for(0, parent="v0", created_at="2026-11-01T00:00:00+00:00"))
    [mv] = client.search_model_versions(f"name='{store.name}'")
    sha = hashlib.sha256(boosters[0].model_to_string().encode()).hexdigest()
    assert mv.tags["sluice.version"] == v and mv.tags["sluice.sha256"] == sha
    assert (mv.tags["sluice.parent"], mv.tags["sluice.trigger"], mv.tags["sluice.status"]) == ("v0", "test", "active")
    assert sorted(a.path for a in client.list_artifacts(mv.run_id, "model")) == ["model/model.json", "model/model.txt"]
    # A store with an empty cache downloads the artifacts, into a folder named by the model's sha256.
    other = MlflowStore(mlflow_uri, name=store.name, cache_dir=tmp_path / "cache")
    folder = other.folder(v)
    assert folder.is_relative_to(tmp_path / "cache" / sha)
    assert load_model(folder, expected_features=FEATURES, check_in_child=False).version == v
    [info] = other.versions()
    assert (info.version, info.parent, info.created_at, info.auc) == (v, "v0", "2026-11-01T00:00:00+00:00", 0.9)


def test_aliases_are_mlflows_own_both_ways(mlflow_uri, client, boosters):
    store = fresh(mlflow_uri)
    a, b = (store.publish(bst, meta_for(i)) for i, bst in enumerate(boosters[:2]))
    promote(store, a)
    promote(store, b)
    assert client.get_model_version_by_alias(store.name, CHAMPION).tags["sluice.version"] == b
    # An alias moved with MlflowClient (another tool, the MLflow UI) is what the store then reads.
    number_a = next(mv.version for mv in client.search_model_versions(f"name='{store.name}'") if mv.tags["sluice.version"] == a)
    client.set_registered_model_alias(store.name, CHALLENGER, number_a)
    assert store.aliases() == {CHAMPION: b, CHALLENGER: a}
    assert rollback(store) == (b, a)
    assert client.get_model_version_by_alias(store.name, CHAMPION).tags["sluice.version"] == a
    # The history is tags of the registered model, oldest first.
    moves = [m for k, m in sorted(client.get_registered_model(store.name).tags.items()) if k.startswith("sluice.move.")]
    assert len(moves) == 3 and '"kind": "rollback"' in moves[-1]


def test_retiring_tags_the_model_version(mlflow_uri, client, boosters):
    store = fresh(mlflow_uri)
    a, b = (store.publish(bst, meta_for(i)) for i, bst in enumerate(boosters[:2]))
    promote(store, a)
    retire(store, b)
    tags = {mv.tags["sluice.version"]: mv.tags["sluice.status"] for mv in client.search_model_versions(f"name='{store.name}'")}
    assert tags == {a: "active", b: "retired"}


def test_a_damaged_cache_is_replaced_and_a_damaged_artifact_refused(mlflow_uri, client, boosters):
    store = fresh(mlflow_uri)
    v = store.publish(boosters[0], meta_for(0))
    cached = store.folder(v) / MODEL_FILE
    good = cached.read_bytes()
    cached.write_bytes(good[:-10])
    assert (store.folder(v) / MODEL_FILE).read_bytes() == good  # downloaded again, verified
    [mv] = client.search_model_versions(f"name='{store.name}'")
    stored = next(p for p in store.artifact_root.rglob(MODEL_FILE) if mv.run_id in str(p))  # the artifact store's copy
    stored.write_bytes(good.replace(b"tree", b"TREE", 1))
    cached.unlink()
    with pytest.raises(RegistryError, match="do not match the sha256"):
        store.folder(v)


def test_without_a_name_the_only_sluice_model_is_found(new_mlflow_uri, boosters):
    uri = new_mlflow_uri
    with pytest.raises(RegistryError, match="holds no Sluice model"):
        _ = open_store(f"mlflow:{uri}").name
    v = open_store(f"mlflow:{uri}").publish(boosters[0], meta_for(0))  # named after the FeatureService
    assert open_store(f"mlflow:{uri}").name == "svc"
    assert [i.version for i in open_store(f"mlflow:{uri}").versions()] == [v]
    open_store(f"mlflow:{uri}", name="other").publish(boosters[1], meta_for(1, feature_service="other"))
    with pytest.raises(RegistryError, match="name one with --name"):
        open_store(f"mlflow:{uri}").versions()
    with pytest.raises(RegistryError, match="holds versions of FeatureService svc, not other"):
        open_store(f"mlflow:{uri}", name="svc").publish(boosters[2], meta_for(2, feature_service="other"))
    with pytest.raises(RegistryError, match="needs a tracking URI"):
        open_store("mlflow:")
