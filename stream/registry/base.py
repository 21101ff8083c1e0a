"""What every model store offers: versions with metadata, aliases that move, and their history.

A store keeps immutable versions (LightGBM text + model.json) and a few
named pointers to them (aliases: `champion` is what serves, `challenger` a
candidate). Backends implement the storage primitives; the rules are here,
once, for all of them:

* a version id is `v<UTC yyyymmdd-HHMMSS>-<8 hex of the model's sha256>`,
  with `-2`, `-3`, ... when the same model is published twice in a second;
* a retired version can no longer be given an alias; the champion cannot be
  retired, nor its alias deleted (the worker would have nothing to serve);
* every alias move is appended to a history (old, new, kind, reason, time),
  which is what `rollback` reads (stream/registry/manage.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from features.errors import SluiceError
from stream.model_files import META_FILE, MODEL_FILE

CHAMPION = "champion"
CHALLENGER = "challenger"
ACTIVE, RETIRED = "active", "retired"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class RegistryError(SluiceError):
    """A model store operation that cannot be carried out as asked."""


class ModelNotFound(RegistryError):
    def __init__(self, name: str, version: str, hint: str = "`sluice models list` shows the versions there are"):
        self.name, self.version = name, version
        super().__init__(f"model {name!r} has no version {version!r}; {hint}")


class AliasNotFound(RegistryError):
    def __init__(self, name: str, alias: str):
        self.name, self.alias = name, alias
        super().__init__(f"model {name!r} has no alias {alias!r}; set it with `sluice models promote V` or `sluice train`")


class VersionRetired(RegistryError):
    """The version was retired: it may not be given an alias again."""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created_at: str  # ISO-8601 UTC
    status: str  # "active" | "retired"
    aliases: tuple[str, ...] = ()
    parent: str | None = None
    trigger: str | None = None
    auc: float | None = None
    threshold: float | None = None


def new_version_id(model_sha256: str, now: datetime | None = None) -> str:
    now = now or datetime.now(tz=UTC)
    return f"v{now.astimezone(UTC):%Y%m%d-%H%M%S}-{model_sha256[:8]}"


def check_alias(alias: str) -> str:
    # MLflow forbids "latest" and names like "v3" (they read as versions); so do we, for both backends alike.
    if not _ALIAS.match(alias) or alias == "latest" or re.fullmatch(r"v\d+", alias):
        msg = f"alias {alias!r}: use lower-case letters, digits, '-' or '_', starting with a letter (not 'latest' or 'v<number>')"
        raise RegistryError(msg)
    return alias


def model_bytes(source) -> tuple[bytes, dict]:
    """(model text bytes, metadata found with it) of a lightgbm.Booster or a folder with model.txt (+ model.json)."""
    if hasattr(source, "model_to_string"):
        return source.model_to_string().encode("utf-8"), {}
    folder = Path(source)
    if not (folder / MODEL_FILE).is_file():
        msg = f"{folder}: no {MODEL_FILE} to publish; pass a trained booster or a model folder"
        raise RegistryError(msg)
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
    return (folder / MODEL_FILE).read_bytes(), meta


def check_features(data: bytes, meta: dict) -> None:
    """The metadata's feature list is the model's own (the worker refuses a model where they differ)."""
    line = next((ln for ln in data[:1 << 16].decode("utf-8", "replace").splitlines() if ln.startswith("feature_names=")), None)
    if line is None:
        msg = "the model text has no feature_names line: it is not a LightGBM text model"
        raise RegistryError(msg)
    names = line.removeprefix("feature_names=").split(" ")
    if list(meta.get("features") or names) != names:
        msg = "metadata 'features' differ from the model's own feature names; publish the metadata that came with the model"
        raise RegistryError(msg)
    meta.setdefault("features", names)


class ModelStore(ABC):
    """Versions of one model (one FeatureService), their metadata, aliases and alias history."""

    name: str

    # -- storage primitives, per backend -------------------------------------

    @abstractmethod
    def _exists(self, version: str) -> bool: ...

    @abstractmethod
    def _write(self, version: str, data: bytes, meta: dict) -> bool:
        """Store a new version; False if `version` was taken meanwhile (the caller picks the next id)."""

    @abstractmethod
    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first."""

    @abstractmethod
    def meta(self, version: str) -> dict: ...

    @abstractmethod
    def folder(self, version: str) -> Path:
        """A local folder with model.txt and model.json, for stream.serving.model.load_model."""

    @abstractmethod
    def aliases(self) -> dict[str, str]: ...

    @abstractmethod
    def _point(self, alias: str, version: str | None, kind: str, reason: str) -> str | None:
        """Point `alias` at `version` (None: delete it) and record the move; returns where it pointed before.

        Nothing is recorded when the alias already points there.
        """

    @abstractmethod
    def _mark_retired(self, version: str) -> None: ...

    @abstractmethod
    def history(self) -> list[dict]:
        """Alias moves, oldest first: {alias, old, new, kind, reason, at}."""

    @contextlib.contextmanager
    def batch(self):
        """Within it, a backend may answer repeated reads from what it read first (its own writes excepted).

        One operation (promote: resolve, check status, move) reads the same
        listing several times; MLflow need not fetch it each time.
        """
        yield self

    # -- the rules, shared ---------------------------------------------------

    def status(self, version: str) -> str:
        for info in self.versions():
            if info.version == version:
                return info.status
        raise ModelNotFound(self.name, version)

    def resolve(self, version_or_alias: str) -> str:
        """A version id, given a version id or an alias naming one."""
        if self._exists(version_or_alias):
            return version_or_alias
        aliases = self.aliases()
        if version_or_alias in aliases:
            return aliases[version_or_alias]
        raise ModelNotFound(self.name, version_or_alias)

    def publish(self, source, meta: dict | None = None, *, version: str | None = None, now: datetime | None = None) -> str:
        """Store a booster or a model folder with `meta`; returns the new version id (given, or made from `now`)."""
        data, found = model_bytes(source)
        meta = {**found, **(meta or {})}
        check_features(data, meta)
        sha = hashlib.sha256(data).hexdigest()
        base = version or new_version_id(sha, now)
        for n in range(1, 1000):
            candidate = base if n == 1 else f"{base}-{n}"
            full = dict(meta, version=candidate, sha256=sha, format="lightgbm-text")
            full.setdefault("created_at", datetime.now(tz=UTC).isoformat())
            if not self._exists(candidate) and self._write(candidate, data, full):
                return candidate
            if version:
                msg = f"version {version!r} exists already in model {self.name!r}; versions are immutable"
                raise RegistryError(msg)
        msg = f"no free version id after {base}-999"
        raise RegistryError(msg)

    def set_alias(self, alias: str, version: str, *, kind: str = "set", reason: str = "") -> str | None:
        """Point `alias` at `version`; returns the version it pointed at before (None if it was unset)."""
        with self.batch():
            check_alias(alias)
            check_version(version)
            if self.status(version) == RETIRED:  # status() raises ModelNotFound
                msg = f"version {version} is retired; it cannot become {alias}. Train or pick an active version"
                raise VersionRetired(msg)
            return self._point(alias, version, kind, reason)

    def delete_alias(self, alias: str, *, reason: str = "") -> str:
        with self.batch():
            if alias == CHAMPION:
                msg = "the champion alias cannot be deleted: the worker serves it. Promote another version instead"
                raise RegistryError(msg)
            if alias not in self.aliases():
                raise AliasNotFound(self.name, alias)
            return self._point(alias, None, "delete", reason)

    def retire(self, version: str, *, reason: str = "") -> None:
        """Retire `version`: it keeps its files and metadata, loses its aliases and can get none again."""
        with self.batch():
            held = [a for a, v in self.aliases().items() if v == version]
            if CHAMPION in held:
                msg = f"version {version} is the champion; promote another version before retiring it"
                raise RegistryError(msg)
            self.status(version)  # raises ModelNotFound
            for alias in held:
                self._point(alias, None, "retire", reason)
            self._mark_retired(version)


def check_version(version: str) -> str:
    """A version id is also a folder name: no separators, no '..'."""
    if not _VERSION.match(version):
        msg = f"{version!r} is not a version id (letters, digits, '.', '_', '-'; `sluice models list` shows them)"
        raise RegistryError(msg)
    return version


def move_record(alias: str, old: str | None, new: str | None, kind: str, reason: str) -> dict:
    return {"alias": alias, "old": old, "new": new, "kind": kind, "reason": reason, "at": datetime.now(tz=UTC).isoformat()}
