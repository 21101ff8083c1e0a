"""What the compiled scorer (SLUICE_COMPILED_SCORER, lleaves) saves per row against LightGBM, on served vectors.

One call scores 1, 50 or 500 rows, as a request, a small micro-batch and a
full one do; LightGBM and the compiled model take turns over several rounds
and each reports its median, in CPU seconds of this process. Beside them:
how long lleaves takes to compile the model (the worker does it in the
background at load), and how many of the rows the two score differently
(the gate's question; it must be 0).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from stream.tools.bench.report import done, step

ROUNDS = 5
SIZES = (1, 50, 500)
#: Rows scored per measurement: single-row calls are slow, so fewer rows for them.
ROWS_PER_SIZE = {1: 3_000, 50: 20_000, 500: 40_000}


def _us_per_row(score, pool: np.ndarray, size: int) -> float:
    calls = max(1, ROWS_PER_SIZE[size] // size)
    batches = [pool[(i * size) % (len(pool) - size + 1) :][:size] for i in range(calls)]
    started = time.process_time()
    for batch in batches:
        score(batch)
    return (time.process_time() - started) / (calls * size) * 1e6


def measure_compiled(model, matrix: np.ndarray, rounds: int = ROUNDS) -> dict:
    """µs per row of LightGBM and of lleaves at 1, 50 and 500 rows per call; compile seconds; differing rows."""
    from stream.serving.compiled import TOLERANCE, compile_lleaves

    t = step(f"compiled scorer: lleaves against LightGBM on {len(matrix):,} served vectors")
    try:
        started = time.perf_counter()
        compiled = compile_lleaves(model.booster.model_to_string())
    except ImportError as exc:
        done(t, f"skipped: {exc} (install the `compiled` extra)")
        return {"skipped": str(exc)}
    compile_s = time.perf_counter() - started
    pool = np.ascontiguousarray(np.tile(matrix, (max(1, -(-max(SIZES) // len(matrix))), 1)), dtype=np.float64)
    differing = int(np.count_nonzero(~(np.abs(compiled(matrix) - model.lightgbm(matrix)) <= TOLERANCE)))
    runs: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for size in SIZES:
            for name, score in (("lightgbm", model.lightgbm), ("compiled", compiled)):
                runs.setdefault((name, size), []).append(_us_per_row(score, pool, size))
    us = {f"{name}_{size}": round(statistics.median(v), 2) for (name, size), v in runs.items()}
    report = {
        "us_per_row": us,
        "speedup": {str(size): round(us[f"lightgbm_{size}"] / us[f"compiled_{size}"], 2) for size in SIZES},
        "compile_s": round(compile_s, 2),
        "rows_compared": len(matrix),
        "rows_differing": differing,
    }
    done(t, f"µs/row at 1/50/500 rows per call: LightGBM {[us[f'lightgbm_{s}'] for s in SIZES]}, "
            f"compiled {[us[f'compiled_{s}'] for s in SIZES]}; compiled in {compile_s:.1f} s; {differing} rows differ")
    return report
