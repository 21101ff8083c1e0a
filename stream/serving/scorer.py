"""One scoring call per micro-batch: the model's scores and the decisions they imply."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Scored:
    scores: np.ndarray
    decisions: np.ndarray  # score >= threshold
    version: str
    threshold: float
    score_ms: float  # time the model took for the whole batch


class Scorer:
    """Scores a batch's vectors with the model serving now (`Model`: version, threshold, predict)."""

    def __init__(self, model):
        self.model = model

    def score(self, matrix: np.ndarray) -> Scored:
        model = self.model
        started = time.perf_counter()
        scores = model.predict(matrix)
        score_ms = (time.perf_counter() - started) * 1000
        return Scored(scores, scores >= model.threshold, model.version, model.threshold, score_ms)
