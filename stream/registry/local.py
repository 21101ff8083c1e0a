"""The model directory as a store: one folder per version, a `champion` file, a small registry file.

    models/
      champion                 the champion's version id (what the worker and
                               stream.serving.model.resolve read)
      registry.json            {"aliases": {other aliases}, "retired": {version: time},
                                "history": [alias moves, oldest first]}
      v20261101-120000-1a2b3c4d/model.txt, model.json

A directory written before the registry existed (folders and `champion`
only) is a valid store with an empty history. Every file is replaced
atomically (written aside, then renamed); changes of aliases and of the
history happen under an exclusive lock on `.registry.lock`, so two commands
moving aliases at once cannot lose each other's move.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from stream.registry.base import (
    ACTIVE, CHAMPION, RETIRED, ModelNotFound, ModelStore, RegistryError, VersionInfo, check_version, move_record,
)
from stream.model_files import CHAMPION_FILE, META_FILE, MODEL_FILE

REGISTRY_FILE = "registry.json"
LOCK_FILE = ".registry.lock"
#: Alias moves kept; a rollback reaches back at most this far.
HISTORY_LIMIT = 1000


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class LocalStore(ModelStore):
    def __init__(self, root: str | Path, name: str | None = None):
        self.root = Path(root)
        self._name = name

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    @property
    def name(self) -> str:
        """The FeatureService the versions were trained for (the newest version's), else the folder's name."""
        if self._name is None:
            infos = self.versions()
            service = self.meta(infos[-1].version).get("feature_service") if infos else None
            self._name = service or self.root.name
        return self._name

    # -- versions ------------------------------------------------------------

    def _exists(self, version: str) -> bool:
        return (self.root / check_version(version)).is_dir()

    def _write(self, version: str, data: bytes, meta: dict) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root / version
        try:
            folder.mkdir()  # claims the id: two trains in one second cannot both take it
        except FileExistsError:
            return False
        write_atomic(folder / MODEL_FILE, data)
        # model.json last: a folder without it is a version still being written, and is not listed.
        write_atomic(folder / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
        return True

    def versions(self) -> list[VersionInfo]:
        if not self.root.is_dir():
            return []
        state, aliases = self._state(), self.aliases()
        infos = []
        for folder in self.root.iterdir():
            if not (folder / META_FILE).is_file():
                continue
            try:
                meta = json.loads((folder / META_FILE).read_text())
            except ValueError:
                meta = {}  # listed, so that it can be seen and retired; load_model will refuse it
            metrics = meta.get("metrics") or {}
            infos.append(VersionInfo(
                version=folder.name,
                created_at=str(meta.get("created_at") or meta.get("trained_at") or ""),
                status=RETIRED if folder.name in state["retired"] else ACTIVE,
                aliases=tuple(sorted(a for a, v in aliases.items() if v == folder.name)),
                parent=meta.get("parent"),
                trigger=meta.get("trigger"),
                auc=metrics.get("auc", meta.get("validation_auc")),
                threshold=meta.get("threshold"),
            ))
        return sorted(infos, key=lambda i: (i.created_at, i.version))

    def meta(self, version: str) -> dict:
        path = self.folder(version) / META_FILE
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            msg = f"{path}: not valid JSON ({exc}); restore the file or retire the version"
            raise RegistryError(msg) from exc

    def folder(self, version: str) -> Path:
        folder = self.root / check_version(version)
        if not (folder / META_FILE).is_file():
            raise ModelNotFound(self.name, version)
        return folder

    # -- aliases and history ---------------------------------------------------

    def aliases(self) -> dict[str, str]:
        found = dict(self._state()["aliases"])
        champion = self.root / CHAMPION_FILE
        if champion.is_file() and champion.read_text().strip():
            found[CHAMPION] = champion.read_text().strip()
        return dict(sorted(found.items()))

    def history(self) -> list[dict]:
        return list(self._state()["history"])

    def _point(self, alias: str, version: str | None, kind: str, reason: str) -> str | None:
        with self._locked():
            state = self._state()
            old = self.aliases().get(alias)
            if old == version:
                return old
            if alias == CHAMPION:
                write_atomic(self.root / CHAMPION_FILE, f"{version}\n".encode())
            elif version is None:
                state["aliases"].pop(alias, None)
            else:
                state["aliases"][alias] = version
            state["history"] = [*state["history"], move_record(alias, old, version, kind, reason)][-HISTORY_LIMIT:]
            self._save(state)
            return old

    def _mark_retired(self, version: str) -> None:
        with self._locked():
            state = self._state()
            state["retired"].setdefault(version, datetime.now(tz=UTC).isoformat())
            self._save(state)

    # -- files -----------------------------------------------------------------

    def _state(self) -> dict:
        path = self.root / REGISTRY_FILE
        state = {"format": 1, "aliases": {}, "retired": {}, "history": []}
        if path.is_file():
            try:
                state.update(json.loads(path.read_text()))
            except ValueError as exc:
                msg = f"{path}: not valid JSON ({exc}); restore it from a backup (the model folders are intact)"
                raise RegistryError(msg) from exc
        state["aliases"].pop(CHAMPION, None)  # the champion file is the one truth for the champion
        return state

    def _save(self, state: dict) -> None:
        write_atomic(self.root / REGISTRY_FILE, json.dumps(state, indent=2, sort_keys=True).encode())

    @contextlib.contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
