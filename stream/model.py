"""LightGBM models as data: text format plus a metadata file with a checksum.

A model directory holds one folder per version (`model.txt`, `model.json`)
and a `champion` file naming the version the worker serves. Loading verifies
the sha256 recorded in the metadata and that the model's feature names are
exactly the FeatureService vector, in order; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.errors import SluiceError

MODEL_FILE = "model.txt"
META_FILE = "model.json"
CHAMPION_FILE = "champion"


class ModelError(SluiceError):
    """A model that cannot be served as it is."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Model:
    version: str
    features: tuple[str, ...]
    threshold: float
    meta: dict
    booster: object  # lightgbm.Booster

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Scores for a batch of rows (one call per micro-batch, never per row)."""
        if not len(matrix):
            return np.zeros(0)
        return np.asarray(self.booster.predict(matrix, num_threads=1), dtype=np.float64)


def save_model(model_dir: str | Path, version: str, booster, meta: dict, *, champion: bool = True) -> Path:
    """Write `booster` in text format with its metadata; optionally make it the champion."""
    folder = Path(model_dir) / version
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / MODEL_FILE))
    meta = dict(meta, version=version, sha256=sha256_file(folder / MODEL_FILE), format="lightgbm-text")
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if champion:
        (Path(model_dir) / CHAMPION_FILE).write_text(version + "\n")
    return folder


def resolve(path: str | Path) -> Path:
    """A version folder: `path` itself, or the champion named in a model directory."""
    path = Path(path)
    if (path / META_FILE).exists():
        return path
    pointer = path / CHAMPION_FILE
    if pointer.exists():
        return path / pointer.read_text().strip()
    msg = f"no model at {path}: expected {META_FILE} or a {CHAMPION_FILE} file; run `sluice train` first"
    raise ModelError(msg)


def load_model(path: str | Path, expected_features: tuple[str, ...] | None = None) -> Model:
    """Load and verify a model; raise ModelError naming what is wrong and the fix."""
    import lightgbm as lgb

    folder = resolve(path)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        msg = f"model {folder}: cannot read {META_FILE} ({exc}); re-run `sluice train`"
        raise ModelError(msg) from exc
    model_file = folder / MODEL_FILE
    if not model_file.exists():
        msg = f"model {folder}: {MODEL_FILE} is missing; re-run `sluice train`"
        raise ModelError(msg)
    actual = sha256_file(model_file)
    if actual != meta.get("sha256"):
        msg = (
            f"model {folder}: checksum mismatch (metadata says {meta.get('sha256')}, file has {actual}); "
            "the model file was changed or corrupted. Refusing to serve it: restore the file or re-run `sluice train`"
        )
        raise ModelError(msg)
    booster = lgb.Booster(model_file=str(model_file))
    names = tuple(booster.feature_name())
    if tuple(meta.get("features", ())) != names:
        msg = f"model {folder}: metadata feature list differs from the model's own; re-run `sluice train`"
        raise ModelError(msg)
    if expected_features is not None and names != tuple(expected_features):
        missing = [f for f in expected_features if f not in names]
        extra = [f for f in names if f not in expected_features]
        msg = (
            f"model {folder} was trained on other features than the FeatureService provides "
            f"(missing {missing[:3]}, extra {extra[:3]}, or a different order); retrain with `sluice train`"
        )
        raise ModelError(msg)
    return Model(
        version=str(meta["version"]),
        features=names,
        threshold=float(meta.get("threshold", 0.5)),
        meta=meta,
        booster=booster,
    )
