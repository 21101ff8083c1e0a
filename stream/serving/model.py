"""LightGBM models as data: text format plus a metadata file with a checksum.

A model directory holds one folder per version (`model.txt`, `model.json`)
and a `champion` file naming the version the worker serves. Loading verifies
the sha256 recorded in the metadata and that the model's feature names are
exactly the FeatureService vector, in order; nothing is unpickled.

A checksum says the file is the one the metadata names, not that LightGBM can
read it: a truncated file whose checksum was recomputed makes LightGBM's
parser abort or segfault the process that loads it. So the verified bytes are
first loaded, and one row of NaNs scored, in a child interpreter; only when
that child exits cleanly does the serving process load the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.errors import SluiceError

MODEL_FILE = "model.txt"
META_FILE = "model.json"
CHAMPION_FILE = "champion"
#: Longest a child interpreter may take to load and score a model (a 200-tree model takes under 1 s).
CHILD_TIMEOUT_S = 60.0
#: What the child runs: the model text arrives on stdin, exactly the bytes the parent verified.
CHILD_CHECK = (
    "import sys, numpy as np, lightgbm as lgb; "
    "b = lgb.Booster(model_str=sys.stdin.buffer.read().decode()); "
    "b.predict(np.full((1, b.num_feature()), np.nan), num_threads=1)"
)


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


def load_model(
    path: str | Path,
    expected_features: tuple[str, ...] | None = None,
    *,
    check_in_child: bool = True,
    child_timeout_s: float = CHILD_TIMEOUT_S,
) -> Model:
    """Load and verify a model; raise ModelError naming what is wrong and the fix.

    `check_in_child=False` skips the child-process load (about 0.4 s): for
    callers that load many models they have just written themselves.
    """
    # Over 60 lines on purpose: one check after another, each with its own message
    # naming the fix; they read best in sequence.
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
    # Read once: the bytes checked here are the bytes the child and this process parse.
    data = model_file.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != meta.get("sha256"):
        msg = (
            f"model {folder}: checksum mismatch (metadata says {meta.get('sha256')}, file has {actual}); "
            "the model file was changed or corrupted. Refusing to serve it: restore the file or re-run `sluice train`"
        )
        raise ModelError(msg)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(_unparsable(folder, "it is not text")) from None
    if check_in_child:
        _check_in_child(folder, data, child_timeout_s)
    try:
        booster = lgb.Booster(model_str=text)
    except (lgb.basic.LightGBMError, ValueError) as exc:  # ValueError: its trailing JSON (pandas_categorical) is bad
        raise ModelError(_unparsable(folder, _first_line(str(exc)))) from exc
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


def _unparsable(folder: Path, why: str) -> str:
    return f"model {folder}: LightGBM cannot parse {MODEL_FILE} ({why}); re-run `sluice train` or restore the file"


def _first_line(text: str, limit: int = 160) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "no message")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _check_in_child(folder: Path, data: bytes, timeout_s: float) -> None:
    """Load `data` and score one row in a child interpreter; raise ModelError if that fails in any way."""
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD_CHECK], input=data, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        msg = (
            f"model {folder}: LightGBM did not load {MODEL_FILE} in a test process within {timeout_s:g} s; "
            "re-run `sluice train` or restore the file"
        )
        raise ModelError(msg) from None
    if proc.returncode == 0:
        return
    if proc.returncode < 0:
        number = -proc.returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown"
        raise ModelError(_unparsable(folder, f"the loader crashed with signal {number}, {name}"))
    # A Python exception (LightGBMError): its message is the last line of the traceback.
    stderr = proc.stderr.decode("utf-8", errors="replace")  # a dying parser may print any bytes
    lines = [s for s in stderr.splitlines() if s.strip() and not s.startswith("[LightGBM]")]
    last = lines[-1] if lines else f"exit code {proc.returncode}"
    raise ModelError(_unparsable(folder, _first_line(last.removeprefix("lightgbm.basic.LightGBMError: "))))
