"""LightGBM models as data: text format plus a metadata file with a checksum.

A model directory holds one folder per version (`model.txt`, `model.json`)
and a `champion` file naming the version the worker serves. Loading verifies
the sha256 recorded in the metadata and that the model's feature names are
exactly the FeatureService vector, in order; nothing is unpickled.

A checksum says the file is the one the metadata names, not that LightGBM can
read it: a truncated file whose checksum was recomputed makes LightGBM's
parser abort or segfault the process that loads it. So the verified bytes are
first loaded, and one row of NaNs scored, in a child interpreter; only when
the child has done so does the serving process load the same bytes. The
child stays for the next load (a hot swap then costs the model's parse, not
an interpreter's start-up: 15-60 ms instead of 0.4-5 s here); one that a
model crashes is replaced at the next load.
"""

from __future__ import annotations

import hashlib
import json
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.errors import SluiceError
from stream.model_files import CHAMPION_FILE, META_FILE, MODEL_FILE

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
    compiled: object = None  # stream.serving.compiled.CompiledScorer (SLUICE_COMPILED_SCORER), or None

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Scores for a batch of rows (one call per micro-batch, never per row)."""
        if not len(matrix):
            return np.zeros(0)
        if self.compiled is not None:
            return self.compiled.predict(matrix, self.lightgbm)
        return self.lightgbm(matrix)

    def lightgbm(self, matrix: np.ndarray) -> np.ndarray:
        """LightGBM's own scores: what a compiled scorer must equal."""
        native = _native(self.booster)
        if native is not None:
            return native(matrix)
        return np.asarray(self.booster.predict(matrix, num_threads=1), dtype=np.float64)


#: Per booster: its `native_scores`, or None where they are not used (see there). Weak: a swapped-out model goes.
_NATIVES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _native(booster):
    try:
        return _NATIVES[booster]
    except KeyError:
        pass
    except TypeError:  # not weakly referable (a stand-in for a booster): never native
        return None
    native = native_scores(booster)
    _NATIVES[booster] = native
    return native


def native_scores(booster, probe_rows: int = 64):
    """LightGBM's scoring call as `booster.predict(matrix, num_threads=1)` makes it, without its per-call set-up.

    `Booster.predict` builds a predictor on every call (three C calls, its
    parameters as text, checks of the input) before the one call that
    scores, `LGBM_BoosterPredictForMat`: about 50 µs of a small batch's
    scoring. This makes that call alone, with the same arguments. Only for a
    model with one score per row, and only once a probe matrix (NaNs,
    zeros, extremes, random values) has scored exactly as `predict` scores
    it; None otherwise, and then `predict` is used. A matrix not of
    float64 goes through `predict` too.
    """
    import ctypes

    try:
        from lightgbm import basic

        lib, handle, safe_call = basic._LIB, booster._handle, basic._safe_call
        classes = ctypes.c_int(0)
        safe_call(lib.LGBM_BoosterGetNumClasses(handle, ctypes.byref(classes)))
        if classes.value != 1:
            return None
        parameters = basic._c_str(basic._param_dict_to_str({"num_threads": 1}))
        iterations, width = ctypes.c_int(booster.best_iteration), booster.num_feature()
        row_major, col_major, normal = basic._C_API_IS_ROW_MAJOR, basic._C_API_IS_COL_MAJOR, basic._C_API_PREDICT_NORMAL
    except Exception:  # noqa: BLE001 - another LightGBM's internals: its own predict serves
        return None

    def scores(matrix: np.ndarray) -> np.ndarray:
        if matrix.dtype != np.float64 or matrix.ndim != 2 or not (matrix.flags.c_contiguous or matrix.flags.f_contiguous):
            return np.asarray(booster.predict(matrix, num_threads=1), dtype=np.float64)
        rows = matrix.shape[0]
        out = np.empty(rows, dtype=np.float64)
        written = ctypes.c_int64(0)
        safe_call(lib.LGBM_BoosterPredictForMat(
            handle, matrix.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(basic._C_API_DTYPE_FLOAT64),
            ctypes.c_int32(rows), ctypes.c_int32(matrix.shape[1]),
            # As `predict` reads it: a matrix that is column-major (one row is both) is passed so.
            ctypes.c_int(col_major if matrix.flags.f_contiguous else row_major), ctypes.c_int(normal),
            ctypes.c_int(0), iterations, parameters, ctypes.byref(written),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        ))
        if written.value != rows:
            return np.asarray(booster.predict(matrix, num_threads=1), dtype=np.float64)
        return out

    rng = np.random.default_rng(0)
    probe = rng.normal(scale=1e3, size=(probe_rows, width))
    probe[rng.random(probe.shape) < 0.2] = np.nan
    probe[0], probe[1], probe[2] = np.nan, 0.0, 1e300
    try:
        agree = all(
            np.array_equal(scores(m), np.asarray(booster.predict(m, num_threads=1), dtype=np.float64), equal_nan=True)
            for m in (probe, probe[:1], np.asfortranarray(probe))
        )
    except Exception:  # noqa: BLE001
        return None
    return scores if agree else None


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
    why = _checker().check(data, timeout_s)
    if why is None:
        return
    if why.startswith("timeout"):
        msg = (
            f"model {folder}: LightGBM did not load {MODEL_FILE} in a test process within {timeout_s:g} s; "
            "re-run `sluice train` or restore the file"
        )
        raise ModelError(msg)
    raise ModelError(_unparsable(folder, _first_line(why)))


#: What the checker does per model: exactly CHILD_CHECK's load and one scored row of NaNs.
CHECKER_SETUP = """import numpy as np, lightgbm as lgb
def check(data):
    b = lgb.Booster(model_str=data.decode())
    b.predict(np.full((1, b.num_feature()), np.nan), num_threads=1)
"""
#: The checker's loop around CHILD_CHECK: one model per request (8-byte length, then the bytes), one line back.
CHECKER_LOOP = """
import struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
{setup}
out.write(b"ready\\n"); out.flush()
while True:
    head = inp.read(8)
    if len(head) < 8:
        break
    data = inp.read(struct.unpack(">Q", head)[0])
    try:
        check(data)
        out.write(b"ok\\n")
    except Exception as exc:
        text = str(exc).replace("\\n", " ").removeprefix("lightgbm.basic.LightGBMError: ")
        out.write(("error " + (text or type(exc).__name__)[:400] + "\\n").encode())
    out.flush()
"""


class _Checker:
    """A long-lived child interpreter that loads models for the parent, so a swap does not pay its start-up.

    The child imports LightGBM once (seconds on a busy machine) and then
    checks one model per request; a model that crashes it (a signal) is
    reported as such and the next request starts a new child. It exits when
    its parent does (its stdin closes).
    """

    def __init__(self, program: str):
        self.program = program
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.lock = threading.Lock()

    def _start(self) -> None:
        # CHILD_CHECK replaced (a test's hanging loader) runs as it is: it never says "ready".
        program = CHECKER_LOOP.format(setup=CHECKER_SETUP) if self.program == CHILD_CHECK_DEFAULT else self.program
        self.proc = subprocess.Popen(
            [sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.ready = False

    def check(self, data: bytes, timeout_s: float) -> str | None:
        """None if the child loaded and scored the model; else why not ("timeout", "crashed ...", an error)."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            deadline = time.monotonic() + timeout_s
            try:
                if not self.ready:
                    line = self._line(deadline)
                    if line is None:
                        return self._fail("timeout")
                    if line != b"ready":
                        return self._fail(self._died())
                    self.ready = True
                self.proc.stdin.write(struct.pack(">Q", len(data)) + data)
                self.proc.stdin.flush()
                line = self._line(deadline)
            except (BrokenPipeError, OSError):
                return self._fail(self._died())
            if line is None:
                return self._fail("timeout")
            if line == b"ok":
                return None
            if line.startswith(b"error "):
                return line[6:].decode("utf-8", errors="replace")
            return self._fail(self._died())

    def _line(self, deadline: float) -> bytes | None:
        """The child's next line, b"" if it died, None at the deadline."""
        out = self.proc.stdout
        ready, _, _ = select.select([out], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        return out.readline().strip()

    def _died(self) -> str:
        code = self.proc.wait(5)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown"
            return f"the loader crashed with signal {-code}, {name}"
        stderr = self.proc.stderr.read().decode("utf-8", errors="replace")
        lines = [s for s in stderr.splitlines() if s.strip() and not s.startswith("[LightGBM]")]
        return (lines[-1] if lines else f"exit code {code}").removeprefix("lightgbm.basic.LightGBMError: ")

    def _fail(self, why: str) -> str:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        return why


CHILD_CHECK_DEFAULT = CHILD_CHECK
_checkers: dict[str, _Checker] = {}


def start_checker() -> None:
    """Start the checking child now, so that its imports (numpy, LightGBM) run while the caller's own go on.

    A worker's first `load_model` otherwise waits for them: 0.5 s of every
    start on a quiet machine, while a killed worker's partitions wait for it.
    """
    checker = _checker()
    with checker.lock:
        if checker.proc is None or checker.proc.poll() is not None:
            checker._start()


def _checker() -> _Checker:
    program = CHILD_CHECK  # read at call time: a test may replace it
    if program not in _checkers:
        _checkers[program] = _Checker(program)
    return _checkers[program]
