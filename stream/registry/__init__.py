"""Model stores: where model versions live, which one is champion, and how that changed.

    open_store(".sluice/models")                       # a model directory (LocalStore)
    open_store("mlflow:sqlite:////srv/mlflow/mlflow.db") # the MLflow Model Registry (MlflowStore)

Both keep the same things behind one interface (`ModelStore`, base.py):
immutable versions of LightGBM text plus model.json, aliases (`champion`,
`challenger`), retirement, and the history of alias moves that `rollback`
reads. `folder(version)` always gives a local folder for
`stream.serving.model.load_model`, which verifies it before anything serves.
"""

from __future__ import annotations

from pathlib import Path

from stream.registry.base import (
    CHALLENGER, CHAMPION, AliasNotFound, ModelNotFound, ModelStore, RegistryError, VersionInfo, VersionRetired,
)
from stream.registry.local import LocalStore

MLFLOW_PREFIX = "mlflow:"

__all__ = [
    "CHALLENGER", "CHAMPION", "AliasNotFound", "LocalStore", "ModelNotFound", "ModelStore", "RegistryError",
    "VersionInfo", "VersionRetired", "open_store",
]


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
