"""Model stores: where model versions live, which one is champion, and how that changed.

    open_store(".sluice/models")                       # a model directory (LocalStore)
    open_store("mlflow:sqlite:////srv/mlflow/mlflow.db") # the MLflow Model Registry (MlflowStore)

Both keep the same things behind one interface (`ModelStore`, base.py):
immutable versions of LightGBM text plus model.json, aliases (`champion`,
`challenger`), retirement, and the history of alias moves that `rollback`
reads. `folder(version)` always gives a local folder for
`stream.serving.model.load_model`, which verifies it before anything serves.

A process opens its store once, from its Settings, with `open_registry`
(SLUICE_REGISTRY, else the model directory), and hands that handle to
whatever needs versions: the worker's deployer, the monitor, the rollout
controller, the commands.
"""

from __future__ import annotations

from pathlib import Path

from stream.registry.base import (
    CHALLENGER, CHAMPION, AliasNotFound, ModelNotFound, ModelStore, RegistryError, VersionInfo, VersionRetired,
)
from stream.registry.local import LocalStore
from stream.settings import Settings

MLFLOW_PREFIX = "mlflow:"

__all__ = [
    "CHALLENGER", "CHAMPION", "AliasNotFound", "LocalStore", "ModelNotFound", "ModelStore", "RegistryError",
    "VersionInfo", "VersionRetired", "local_folder", "open_registry", "open_store", "registry_location",
]


def registry_location(settings: Settings) -> str | Path:
    """Where a process's versions live: SLUICE_REGISTRY (`--registry`) when set, else the model directory.

    `sluice train` opens it itself (open_store), named after the plan's FeatureService it publishes for.
    """
    return settings.registry or settings.model_dir


def open_registry(settings: Settings, *, name: str | None = None) -> ModelStore:
    """The store a process fetches its versions from (`registry_location`)."""
    return open_store(registry_location(settings), name=name)


def local_folder(store: ModelStore):
    """version -> a local folder holding it: a model directory's own (unchecked: load_model verifies it), else fetched."""
    if isinstance(store, LocalStore):
        return lambda version: store.root / version
    return lambda version: Path(store.folder(version))


def open_store(where: str | Path | ModelStore, *, name: str | None = None) -> ModelStore:
    """A store from a model directory path or `mlflow:<tracking URI>` (e.g. mlflow:sqlite:////abs/mlflow.db).

    `name` is the registered model (MLflow; default: the FeatureService the
    versions were trained for); a model directory holds one model and needs none.
    """
    if isinstance(where, ModelStore):
        return where
    text = str(where)
    if text.startswith(MLFLOW_PREFIX):
        from stream.registry.mlflow_store import MlflowStore

        uri = text.removeprefix(MLFLOW_PREFIX)
        if not uri:
            msg = "--registry mlflow: needs a tracking URI, e.g. mlflow:sqlite:////abs/path/mlflow.db"
            raise RegistryError(msg)
        return MlflowStore(uri, name=name)
    return LocalStore(Path(where), name=name)
