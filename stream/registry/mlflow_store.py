"""The MLflow Model Registry as a store: registered model versions, MLflow aliases, tags.

    store = MlflowStore("sqlite:////srv/mlflow/mlflow.db")     # `--registry mlflow:sqlite:////srv/mlflow/mlflow.db`

One registered model per FeatureService (its name unless given). A Sluice
version is an MLflow model version whose run holds `model/model.txt` and
`model/model.json` as artifacts; its tags say the Sluice version id
(`sluice.version`), the model file's sha256, status, parent, trigger, AUC
and threshold, so `list` needs no download. Aliases are MLflow's own
(`set_registered_model_alias`, read back by number). Retiring is the tag
`sluice.status=retired`: MLflow's stages are deprecated, tags are not.
Alias moves are tags of the registered model, one per move
(`sluice.move.<ns since epoch>`), so the history has no size limit.

A SQLite tracking/registry URI needs no server: artifacts go next to the
database (`<db dir>/mlflow-artifacts`), downloads into `<db dir>/mlflow-cache`,
keyed by the model's sha256 and checked against it on every use
(stream/registry/cache.py).

MLflow is imported here only, when a store is opened: the worker and the
rest of Sluice never need it (`pip install 'sluice[mlflow]'`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from stream.registry.base import (
    ACTIVE, ModelNotFound, ModelStore, RegistryError, VersionInfo, check_version, move_record,
)
from stream.registry.cache import ArtifactCache, holds
from stream.model_files import META_FILE, MODEL_FILE

EXPERIMENT = "sluice-models"
ARTIFACT_PATH = "model"
_TAG = "sluice."
_MOVE = "sluice.move."
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine
    try:
        import mlflow
        from mlflow import MlflowClient
    except ImportError:
        msg = "the MLflow registry needs MLflow: pip install 'sluice[mlflow]' (mlflow-skinny, sqlalchemy, alembic)"
        raise RegistryError(msg) from None
    for noisy in ("mlflow", "alembic"):  # table creation and migrations log at INFO on first use
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return mlflow, MlflowClient


class MlflowStore(ModelStore):
    def __init__(self, uri: str, name: str | None = None, cache_dir: str | Path | None = None):
        self.mlflow, client_cls = _mlflow()
        self.uri = uri
        self.client = client_cls(tracking_uri=uri, registry_uri=uri)
        self._name = name
        self._batch_depth, self._memo = 0, {}
        local = _sqlite_dir(uri)
        self.artifact_root = (local / "mlflow-artifacts") if local else None
        self.cache = ArtifactCache(Path(cache_dir) if cache_dir else (local or Path.home() / ".cache" / "sluice") / "mlflow-cache")

    def __repr__(self) -> str:
        return f"MlflowStore({self.uri!r}, name={self._name!r})"

    @property
    def name(self) -> str:
        """The registered model: as given, else the only one in the registry that Sluice made."""
        if self._name is None and not self._registered():
            msg = f"MLflow registry {self.uri} holds no Sluice model yet; publish one with `sluice train --registry mlflow:{self.uri}`"
            raise RegistryError(msg)
        return self._name

    @contextlib.contextmanager
    def batch(self):
        self._batch_depth += 1
        try:
            yield self
        finally:
            self._batch_depth -= 1
            if not self._batch_depth:
                self._memo = {}

    def _remember(self, key: str, read):
        """`read()`, or inside a batch what it returned the first time (a write forgets everything)."""
        if not self._batch_depth:
            return read()
        if key not in self._memo:
            self._memo[key] = read()
        return self._memo[key]

    def _wrote(self) -> None:
        self._memo = {}

    # -- versions ------------------------------------------------------------

    def _all(self) -> dict[str, object]:
        """Sluice version id -> MLflow ModelVersion, for this registered model."""
        if not self._named():
            return {}
        return self._remember("versions", self._search)

    def _search(self) -> dict[str, object]:
        found = _pages(self.client.search_model_versions, f"name='{self._name}'")
        return {mv.tags[f"{_TAG}version"]: mv for mv in found if f"{_TAG}version" in mv.tags}

    def _mv(self, version: str):
        mv = self._all().get(check_version(version))
        if mv is None:
            raise ModelNotFound(self.name, version)
        return mv

    def _exists(self, version: str) -> bool:
        return version in self._all()

    def _write(self, version: str, data: bytes, meta: dict) -> bool:
        if self._name is None:
            self._name = meta.get("feature_service") or "sluice-model"
        if not _NAME.match(self._name):
            msg = f"{self._name!r} cannot name an MLflow registered model here: use letters, digits, '.', '_', '-'"
            raise RegistryError(msg)
        model, service = self._model(), str(meta.get("feature_service") or "")
        if model is None:
            self.client.create_registered_model(self.name, tags={f"{_TAG}feature_service": service})
        elif service and model.tags.get(f"{_TAG}feature_service", service) not in ("", service):
            msg = (
                f"registered model {self.name} holds versions of FeatureService {model.tags[f'{_TAG}feature_service']}, "
                f"not {service}; publish with name={service!r} (--name)"
            )
            raise RegistryError(msg)
        with tempfile.TemporaryDirectory(prefix="sluice-publish-") as tmp:
            folder = Path(tmp) / ARTIFACT_PATH
            folder.mkdir()
            (folder / MODEL_FILE).write_bytes(data)
            (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
            run = self.client.create_run(self._experiment(), tags={f"{_TAG}version": version}, run_name=version)
            self.client.log_artifacts(run.info.run_id, str(folder), ARTIFACT_PATH)
            self.client.set_terminated(run.info.run_id)
            self.client.create_model_version(
                self.name, f"{run.info.artifact_uri}/{ARTIFACT_PATH}", run_id=run.info.run_id, tags=_tags(version, meta),
            )
            self.cache.put(folder, meta["sha256"], self.name, version)
        self._wrote()
        return True

    def versions(self) -> list[VersionInfo]:
        every = self._all()
        aliases = self._aliases(every)
        infos = []
        for version, mv in every.items():
            tags = mv.tags
            infos.append(VersionInfo(
                version=version,
                created_at=tags.get(f"{_TAG}created_at", ""),
                status=tags.get(f"{_TAG}status", ACTIVE),
                aliases=tuple(sorted(a for a, v in aliases.items() if v == version)),
                parent=tags.get(f"{_TAG}parent"),
                trigger=tags.get(f"{_TAG}trigger"),
                auc=_float(tags.get(f"{_TAG}auc")),
                threshold=_float(tags.get(f"{_TAG}threshold")),
            ))
        return sorted(infos, key=lambda i: (i.created_at, i.version))

    def meta(self, version: str) -> dict:
        return json.loads((self.folder(version) / META_FILE).read_text())

    def folder(self, version: str) -> Path:
        mv = self._mv(version)
        sha = mv.tags.get(f"{_TAG}sha256", "")
        cached = self.cache.get(sha, self.name, version)
        if cached is not None:
            return cached
        with tempfile.TemporaryDirectory(prefix="sluice-download-") as tmp:
            got = Path(self.mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=tmp, tracking_uri=self.uri))
            if not holds(got, sha):
                msg = (
                    f"MLflow version {mv.version} ({version}) of {self.name}: its artifacts do not match the sha256 "
                    "recorded at publish time; the artifact store was changed. Re-publish the model or retire the version"
                )
                raise RegistryError(msg)
            return self.cache.put(got, sha, self.name, version)

    # -- aliases and history ---------------------------------------------------

    def aliases(self) -> dict[str, str]:
        return self._aliases(self._all())

    def _aliases(self, every: dict) -> dict[str, str]:
        model = self._model() if every else None
        if model is None:
            return {}
        by_number = {str(mv.version): v for v, mv in every.items()}
        # MLflow keeps alias -> version number; Sluice speaks version ids.
        return dict(sorted((alias, by_number[str(n)]) for alias, n in model.aliases.items() if str(n) in by_number))

    def history(self) -> list[dict]:
        model = self._model()
        if model is None:
            return []
        tags = model.tags
        return [json.loads(tags[k]) for k in sorted(t for t in tags if t.startswith(_MOVE))]

    def _point(self, alias: str, version: str | None, kind: str, reason: str) -> str | None:
        every = self._all()
        old = self._aliases(every).get(alias)
        if old == version:
            return old
        if version is None:
            self.client.delete_registered_model_alias(self.name, alias)
        elif version not in every:
            raise ModelNotFound(self.name, version)
        else:
            self.client.set_registered_model_alias(self.name, alias, str(every[version].version))
        move = move_record(alias, old, version, kind, reason)
        self.client.set_registered_model_tag(self.name, f"{_MOVE}{time.time_ns():020d}", json.dumps(move, sort_keys=True))
        self._wrote()
        return old

    def _mark_retired(self, version: str) -> None:
        self.client.set_model_version_tag(self.name, str(self._mv(version).version), f"{_TAG}status", "retired")
        self._wrote()

    # -- MLflow plumbing -----------------------------------------------------

    def _named(self) -> bool:
        """Whether there is a name; without one given, the registry's only Sluice model is this store's."""
        if self._name is None:
            ours = [m.name for m in _pages(self.client.search_registered_models) if f"{_TAG}feature_service" in m.tags]
            if len(ours) > 1:
                msg = f"MLflow registry {self.uri} holds Sluice models {sorted(ours)}; name one with --name"
                raise RegistryError(msg)
            self._name = ours[0] if ours else None
        return self._name is not None

    def _model(self):
        """The registered model, None while it does not exist."""
        from mlflow.exceptions import MlflowException

        if not self._named():
            return None

        def read():
            try:
                return self.client.get_registered_model(self._name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise

        return self._remember("model", read)

    def _registered(self) -> bool:
        return self._model() is not None

    def _experiment(self) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        location = self.artifact_root.resolve().as_uri() if self.artifact_root else None
        return self.client.create_experiment(EXPERIMENT, artifact_location=location)


def _tags(version: str, meta: dict) -> dict[str, str]:
    metrics = meta.get("metrics") or {}
    values = {
        "version": version, "sha256": meta["sha256"], "status": ACTIVE, "created_at": meta.get("created_at"),
        "feature_service": meta.get("feature_service"), "parent": meta.get("parent"), "trigger": meta.get("trigger"),
        "auc": metrics.get("auc", meta.get("validation_auc")), "threshold": meta.get("threshold"),
    }
    return {f"{_TAG}{k}": str(v) for k, v in values.items() if v is not None}


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _sqlite_dir(uri: str) -> Path | None:
    """The folder of a sqlite:/// database (artifacts and the cache live beside it), None for other URIs."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve().parent


def _pages(search, filter_string: str | None = None) -> list:
    found, token = [], None
    while True:
        page = search(filter_string=filter_string, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found
