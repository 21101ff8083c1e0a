"""Local copies of a remote store's model files, keyed by the model's sha256 and checked on every use.

    <root>/<sha256>/<model name>/<version>/model.txt, model.json

The name and version are part of the key because model.json says which
version it is, and the same model file may be published twice. A copy is
handed out only while its model.txt still has the registry's sha256; a
damaged one is replaced by the verified download. Copies are put in place
with one rename, so a reader never sees half a folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from stream.model_files import META_FILE, MODEL_FILE


def holds(folder: Path, sha: str) -> bool:
    """Whether `folder` has model.json and a model.txt whose sha256 is `sha`."""
    model = folder / MODEL_FILE
    return model.is_file() and (folder / META_FILE).is_file() and hashlib.sha256(model.read_bytes()).hexdigest() == sha


class ArtifactCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, sha: str, name: str, version: str) -> Path:
        return self.root / sha / name / version

    def get(self, sha: str, name: str, version: str) -> Path | None:
        folder = self.path(sha, name, version)
        return folder if holds(folder, sha) else None

    def put(self, source: Path, sha: str, name: str, version: str) -> Path:
        """Copy model.txt and model.json from `source` into the cache; the caller has verified `source`."""
        target = self.path(sha, name, version)
        if target.exists() and not holds(target, sha):
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}."))
        for file in (MODEL_FILE, META_FILE):
            shutil.copyfile(source / file, staging / file)
        try:
            os.replace(staging, target)
        except OSError:  # another process put a complete copy there first
            shutil.rmtree(staging, ignore_errors=True)
        return target
