"""An optional compiled scorer, trusted for a model version only once it has scored real rows as LightGBM does.

lleaves compiles a LightGBM model to machine code (LLVM) and scores a row
several times faster than LightGBM's Python API (docs/performance.md). A
compiler is one more place where a model can go wrong: tl2cgen, tried on the
demo model, scored 137 of 74,537 real rows differently from LightGBM (nearly
all of them rows with a missing value). So each model version earns it:

1. compiling: in a child interpreter, waited for by a thread started when
   the model is loaded, never inside a batch; LightGBM answers meanwhile.
2. gating: LightGBM answers each batch, and the compiled scorer scores it
   too; every row's probability (what is served, thresholded and logged)
   must be within 1e-12 of LightGBM's.
3. serving: once `gate_rows` rows have all agreed, the compiled scorer
   answers alone.

One differing row, or a compiled call that raises, refuses the compiled
scorer for that version for good: LightGBM answers, one log line gives the
count of differing rows of those compared, and
`sluice_compiled_scorer_total{outcome="refused"}` counts it. A hot swap
loads a new Model, hence a new gate: every version gates anew.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stream import metrics

log = logging.getLogger("sluice.serving")

#: Largest absolute difference from LightGBM's probability the gate lets pass.
TOLERANCE = 1e-12

#: What the child runs: compile the model file (argv[1]) and write the object code to argv[2].
CHILD_COMPILE = "import sys, lleaves; lleaves.Model(model_file=sys.argv[1]).compile(cache=sys.argv[2])"
#: Longest a compile may take (the demo's 200-tree model: about 5 s of CPU).
COMPILE_TIMEOUT_S = 300.0

COMPILING, GATING, SERVING, REFUSED, UNAVAILABLE = "compiling", "gating", "serving", "refused", "unavailable"

Scores = Callable[[np.ndarray], np.ndarray]
#: Model text -> a function scoring a float64 matrix (one probability per row).
Compiler = Callable[[str], Scores]


def compile_lleaves(model_text: str) -> Scores:
    """The model compiled by lleaves, scoring in the calling thread (`n_jobs=1`, as LightGBM's `num_threads=1`).

    LLVM compiles in a child interpreter, which writes the object code to a
    file; this process only loads it. Compiling here, even in a thread, held
    the GIL for up to 184 ms at a time (lleaves builds the IR in Python):
    pauses of the event loop that scores. A compiler that crashes takes the
    child down, not the worker.
    """
    import lleaves

    with tempfile.TemporaryDirectory(prefix="sluice-lleaves-") as tmp:
        model_file, object_file = Path(tmp) / "model.txt", Path(tmp) / "model.o"
        model_file.write_text(model_text)
        child = subprocess.run(
            [sys.executable, "-c", CHILD_COMPILE, str(model_file), str(object_file)],
            capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False,
        )
        if child.returncode != 0 or not object_file.exists():
            lines = [line for line in child.stderr.splitlines() if line.strip()] or [f"exit code {child.returncode}"]
            raise RuntimeError(f"lleaves did not compile the model: {lines[-1][:200]}")
        compiled = lleaves.Model(model_file=str(model_file))
        compiled.compile(cache=str(object_file))  # loads the child's object code: no LLVM work here
    return lambda matrix: compiled.predict(matrix, n_jobs=1)


class CompiledScorer:
    """One model version's compiled scorer and its gate; `Model.predict` hands it every batch."""

    def __init__(self, version: str, model_text: str, gate_rows: int, compiler: Compiler = compile_lleaves):
        self.version = version
        self.gate_rows = gate_rows
        self.state = COMPILING
        self.compared = 0  # rows scored by both while gating
        self.compile_s: float | None = None
        self._scores: Scores | None = None
        self._lock = threading.RLock()  # _gate refuses while holding it
        self._compiled = threading.Event()
        threading.Thread(
            target=self._compile, args=(compiler, model_text), name=f"compile-{version}", daemon=True
        ).start()

    def wait_compiled(self, timeout_s: float) -> bool:
        """True once compiling has ended, whether or not it succeeded (for tests and `sluice bench`)."""
        return self._compiled.wait(timeout_s)

    def _compile(self, compiler: Compiler, model_text: str) -> None:
        started = time.perf_counter()
        try:
            self._scores = compiler(model_text)
        except Exception as exc:  # noqa: BLE001 - any failure leaves LightGBM answering, which is always right
            self.state = UNAVAILABLE
            metrics.COMPILED_SCORER.labels(UNAVAILABLE).inc()
            log.warning("compiled scorer unavailable for model version %s (%s: %s); LightGBM scores it",
                        self.version, type(exc).__name__, str(exc)[:200])
        else:
            self.compile_s = time.perf_counter() - started
            self.state = GATING
        finally:
            self._compiled.set()

    def predict(self, matrix: np.ndarray, lightgbm: Scores) -> np.ndarray:
        """The batch's scores: the compiled scorer's once it has passed the gate, else LightGBM's."""
        if self.state == SERVING:
            try:
                return np.asarray(self._scores(matrix), dtype=np.float64)
            except Exception as exc:  # noqa: BLE001 - refused like a differing row; LightGBM answers
                self._refuse(f"it raised {type(exc).__name__}: {str(exc)[:200]}")
        expected = lightgbm(matrix)
        if self.state == GATING:
            self._gate(matrix, expected)
        return expected

    def _gate(self, matrix: np.ndarray, expected: np.ndarray) -> None:
        try:
            got = np.asarray(self._scores(matrix), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001
            self._refuse(f"it raised {type(exc).__name__}: {str(exc)[:200]}")
            return
        # NaN never agrees, and a wrong shape differs on every row.
        differ = len(expected) if got.shape != expected.shape else int(np.count_nonzero(~(np.abs(got - expected) <= TOLERANCE)))
        with self._lock:
            if self.state != GATING:
                return
            self.compared += len(expected)
            if differ:
                largest = float(np.nanmax(np.abs(got - expected))) if got.shape == expected.shape else float("nan")
                self._refuse(f"{differ} of {self.compared} rows compared differ from LightGBM's scores by more than "
                             f"{TOLERANCE:g} (largest difference {largest:.3g})")
            elif self.compared >= self.gate_rows:
                self.state = SERVING
                metrics.COMPILED_SCORER.labels(SERVING).inc()
                log.info("compiled scorer serves model version %s: its scores equalled LightGBM's on %d rows "
                         "(compiled in %.1f s)", self.version, self.compared, self.compile_s)

    def _refuse(self, why: str) -> None:
        with self._lock:  # a batch of another thread may be judging it at the same time: refused once, for good
            if self.state == REFUSED:
                return
            self.state = REFUSED
        metrics.COMPILED_SCORER.labels(REFUSED).inc()
        log.error("compiled scorer refused for model version %s: %s; LightGBM scores this version", self.version, why)


def with_compiled(model, gate_rows: int, compiler: Compiler = compile_lleaves):
    """`model` (a stream.serving.model.Model) scoring through a gated compiled scorer; itself when `gate_rows` is 0.

    `gate_rows` is SLUICE_COMPILED_SCORER: rows whose scores must all equal
    LightGBM's before the compiled scorer answers. Compiling starts here, in
    the background.
    """
    if gate_rows <= 0:
        return model
    scorer = CompiledScorer(model.version, model.booster.model_to_string(), gate_rows, compiler)
    return dataclasses.replace(model, compiled=scorer)
