"""Champion against challenger, from labeled events, with intervals that stay valid however often they are read.

A rollout is watched: the report is read after every micro-batch of labels,
and the experiment stops the first time it says promote or stop. A
fixed-sample test read that way finds a difference where there is none far
more often than its alpha says. The intervals here are confidence
*sequences*: with probability at least 1 - alpha, every interval of the
whole run, at every look, holds the true effect. So the chance that an
experiment without a difference ever reports promote or stop, however long
and often it is watched, is at most alpha.

The sequence is the normal-mixture boundary (Robbins 1970, "Statistical
methods related to the law of the iterated logarithm"; the mixture SPRT of
Johari, Koomen, Pekelis & Walsh 2017/2022, "Always valid inference:
continuous monitoring of A/B tests") with the variance estimated from the
data, which makes it an asymptotic confidence sequence (Waudby-Smith,
Arnold, Wu, Lindon & Ramdas 2024, "Time-uniform central limit theory and
asymptotic confidence sequences", Annals of Statistics). Its mixing
variance is tuned so the interval is tightest near `tuned_n` observations
(their rule); it is valid at every n. The always-valid p-value is the
reciprocal of the mixture likelihood ratio (an e-value): at any look, even
one chosen by looking, P(p <= alpha) <= alpha under no difference.

Two comparisons:

* `Paired` (shadow and canary: every deployed version scores every event,
  so both scores exist on the same event): per labeled event the champion's
  loss minus the challenger's (log loss and Brier), whose mean is the
  effect. Positive: the challenger is better. Pairing removes the events'
  own difficulty from the noise (Choe & Ramdas 2023 compare two
  forecasters' scores on one stream this way). It also counts how often
  the two versions' decisions agree, which needs no label.
* `Unpaired` (A/B: each arm's events answered by its own version): the
  champion's mean loss on arm A minus the challenger's on arm B, with the
  sample-ratio check of the arms' counts against the configured split.

Everything is a count, a mean and a sum of squared deviations (Chan, Golub
& LeVeque 1979 merge them), updated with arrays of a micro-batch; the state
may have leading dimensions (many simulated experiments at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ALPHA = 0.05
#: The mixing variance makes the interval tightest near this many labeled events.
TUNED_N = 10_000
#: No decision before this many labeled events and positives: the estimated variance needs them
#: (with rare positives, early events are nearly all negatives and say little about the loss on frauds).
MIN_N = 500
MIN_POSITIVES = 20
#: A sample ratio mismatch below this p-value (chi-square): the arms are not what the split says.
SRM_P = 0.001
EPS = 1e-15
METRICS = ("log_loss", "brier")
KEEP, PROMOTE, STOP = "keep running", "promote", "stop"


def mixture_rho2(alpha: float = ALPHA, tuned_n: float = TUNED_N) -> float:
    """Mixing variance (per unit of the observations' variance) whose interval is tightest at `tuned_n`."""
    a = -2 * math.log(alpha)
    return (a + math.log(a + 1)) / tuned_n


def radius(scale, n, alpha: float = ALPHA, rho2: float | None = None):
    """Half-width of the confidence sequence at n observations whose standard deviation is `scale`."""
    rho2 = mixture_rho2(alpha) if rho2 is None else rho2
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        width = np.sqrt(2 * (n * rho2 + 1) / (n * n * rho2) * np.log(np.sqrt(n * rho2 + 1) / alpha))
        return np.where(n > 0, np.asarray(scale) * width, np.inf)


def p_value(effect, scale, n, alpha: float = ALPHA, rho2: float | None = None):
    """Always-valid p-value of "no effect": 1 / the mixture likelihood ratio, capped at 1.

    p <= alpha exactly when the confidence sequence at the same alpha (and mixing variance) excludes 0.
    """
    rho2 = mixture_rho2(alpha) if rho2 is None else rho2
    n = np.asarray(n, dtype=np.float64)
    effect, scale = np.asarray(effect, dtype=np.float64), np.asarray(scale, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z2 = np.where(scale > 0, effect * effect / (scale * scale), np.where(effect == 0, 0.0, np.inf))
        log_ratio = rho2 * n * n * z2 / (2 * (n * rho2 + 1)) - 0.5 * np.log1p(n * rho2)
        return np.where(n > 0, np.minimum(1.0, np.exp(-log_ratio)), 1.0)


@dataclass
class Moments:
    """Count, mean and sum of squared deviations of a stream (per leading index, when the state has a shape)."""

    n: np.ndarray = field(default_factory=lambda: np.zeros(()))
    mean: np.ndarray = field(default_factory=lambda: np.zeros(()))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(()))

    @classmethod
    def zeros(cls, shape=()) -> Moments:
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape))

    def update(self, values, mask=None) -> Moments:
        """Add a batch (the last axis); `mask` (0/1, same shape) keeps only some of its values."""
        values = np.asarray(values, dtype=np.float64)
        if mask is None:
            k = np.full(values.shape[:-1], values.shape[-1], dtype=np.float64)
            mask = 1.0
        else:
            mask = np.asarray(mask, dtype=np.float64)
            k = mask.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(k > 0, (values * mask).sum(axis=-1) / k, 0.0)
        m2 = (mask * (values - mean[..., None]) ** 2).sum(axis=-1)
        self._combine(k, mean, m2)
        return self

    def _combine(self, k, mean, m2) -> None:
        total = self.n + k
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = mean - self.mean
            self.mean = np.where(total > 0, self.mean + delta * k / total, 0.0)
            self.m2 = np.where(total > 0, self.m2 + m2 + delta * delta * self.n * k / total, 0.0)
        self.n = total

    def merge(self, other: Moments) -> Moments:
        out = Moments(np.copy(self.n), np.copy(self.mean), np.copy(self.m2))
        out._combine(other.n, other.mean, other.m2)
        return out

    @property
    def var(self):
        """Sample variance (n - 1); 0 below two values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n > 1, self.m2 / (self.n - 1), 0.0)


def losses(labels, scores) -> dict:
    """Per event: log loss and Brier score of `scores` against 0/1 `labels` (arrays, any shape)."""
    y = (np.asarray(labels, dtype=np.float64) >= 0.5).astype(np.float64)
    s = np.asarray(scores, dtype=np.float64)
    p = np.clip(s, EPS, 1 - EPS)
    return {"log_loss": -(y * np.log(p) + (1 - y) * np.log1p(-p)), "brier": (s - y) ** 2}


def decide(lower, upper, n, positives, min_n: int = MIN_N, min_positives: int = MIN_POSITIVES):
    """promote when the interval of (champion loss - challenger loss) is above 0, stop when below, else keep running."""
    ready = (np.asarray(n) >= min_n) & (np.asarray(positives) >= min_positives)
    return np.where(ready & (np.asarray(lower) > 0), PROMOTE, np.where(ready & (np.asarray(upper) < 0), STOP, KEEP))


def _summary(effect, scale, n, positives, alpha, rho2, min_n, min_positives) -> dict:
    r = radius(scale, n, alpha, rho2)
    lower, upper = effect - r, effect + r
    return {
        "effect": effect, "lower": lower, "upper": upper, "p_value": p_value(effect, scale, n, alpha, rho2),
        "n": n, "decision": decide(lower, upper, n, positives, min_n, min_positives),
    }


@dataclass
class Settings:
    alpha: float = ALPHA
    tuned_n: int = TUNED_N
    min_n: int = MIN_N
    min_positives: int = MIN_POSITIVES
    metric: str = "log_loss"  # the metric that decides; both are reported

    @property
    def rho2(self) -> float:
        return mixture_rho2(self.alpha, self.tuned_n)


def _plain(value):
    """A number or text for JSON; an unbounded interval end (no data yet) as None."""
    value = np.asarray(value)
    if value.dtype.kind in "iu":
        return int(value)
    if value.dtype.kind == "f":
        return float(value) if np.isfinite(value) else None
    return str(value)


def _report(per_metric: dict, settings: Settings, n, **extra) -> dict:
    """One report: the deciding metric's numbers on top, every metric under "metrics" (plain Python values)."""
    metrics = {m: {k: int(v) if k == "n" else _plain(v) for k, v in s.items()} for m, s in per_metric.items()}
    top = metrics[settings.metric]
    return {"metric": settings.metric, "effect": top["effect"], "interval": [top["lower"], top["upper"]],
            "p_value": top["p_value"], "n": int(n), "decision": top["decision"], "alpha": settings.alpha,
            "metrics": metrics, **extra}


@dataclass
class Paired:
    """Shadow and canary: champion and challenger on the same labeled events."""

    shape: tuple = ()
    diffs: dict = field(default_factory=dict)  # metric -> Moments of champion loss - challenger loss
    positives: np.ndarray = None
    # Decisions of both versions on every scored event (no label needed): both, champion only, challenger only, neither.
    decisions: np.ndarray = None

    def __post_init__(self):
        self.diffs = self.diffs or {m: Moments.zeros(self.shape) for m in METRICS}
        self.positives = np.zeros(self.shape) if self.positives is None else self.positives
        self.decisions = np.zeros((*self.shape, 4)) if self.decisions is None else self.decisions

    def update(self, labels, champion, challenger, mask=None) -> Paired:
        """A micro-batch of labeled events: labels and both versions' scores (the last axis is the batch)."""
        a, b = losses(labels, champion), losses(labels, challenger)
        for m in METRICS:
            self.diffs[m].update(a[m] - b[m], mask)
        y = (np.asarray(labels, dtype=np.float64) >= 0.5) * (1.0 if mask is None else np.asarray(mask, dtype=np.float64))
        self.positives = self.positives + y.sum(axis=-1)
        return self

    def observe_decisions(self, champion, challenger, champion_threshold, challenger_threshold) -> Paired:
        """Scored events, labeled or not: how often the two versions would decide alike."""
        a = np.asarray(champion, dtype=np.float64) >= champion_threshold
        b = np.asarray(challenger, dtype=np.float64) >= challenger_threshold
        cells = np.stack([a & b, a & ~b, ~a & b, ~a & ~b], axis=-1)
        self.decisions = self.decisions + cells.sum(axis=-2)
        return self

    def merge(self, other: Paired) -> Paired:
        return Paired(self.shape, {m: self.diffs[m].merge(other.diffs[m]) for m in METRICS},
                      self.positives + other.positives, self.decisions + other.decisions)

    def summary(self, settings: Settings | None = None) -> dict:
        """Per metric: effect, interval, always-valid p-value, n and decision (arrays of the state's shape)."""
        s = settings or Settings()
        return {m: _summary(d.mean, np.sqrt(d.var), d.n, self.positives, s.alpha, s.rho2, s.min_n, s.min_positives)
                for m, d in self.diffs.items()}

    def agreement(self) -> dict | None:
        counts = np.asarray(self.decisions)
        total = counts.sum(axis=-1)
        if counts.ndim != 1 or total == 0:
            return None
        both, champion_only, challenger_only, neither = (int(c) for c in counts)
        return {"events": int(total), "rate": (both + neither) / total, "both_positive": both,
                "champion_only": champion_only, "challenger_only": challenger_only}

    def report(self, settings: Settings | None = None) -> dict:
        s = settings or Settings()
        return _report(self.summary(s), s, self.diffs[s.metric].n, kind="paired", positives=int(self.positives),
                       agreement=self.agreement())


def srm_p_value(counts, shares) -> float:
    """Chi-square p-value of the observed counts per arm against the configured shares."""
    counts = np.asarray(counts, dtype=np.float64)
    shares = np.asarray(shares, dtype=np.float64)
    total = counts.sum()
    if total == 0 or np.any(shares <= 0):
        return 1.0
    expected = total * shares / shares.sum()
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    from scipy import stats as sstats  # here: importing scipy.stats costs every `sluice` command ~2-3 s

    return float(sstats.chi2.sf(chi2, len(counts) - 1))


@dataclass
class Unpaired:
    """A/B: the champion's loss on arm A against the challenger's on arm B (each event scored by its arm)."""

    share_b: float = 0.5
    shape: tuple = ()
    arms: dict = field(default_factory=dict)  # ("a" | "b", metric) -> Moments of that arm's loss
    positives: np.ndarray = None

    def __post_init__(self):
        self.arms = self.arms or {(arm, m): Moments.zeros(self.shape) for arm in "ab" for m in METRICS}
        self.positives = np.zeros(self.shape) if self.positives is None else self.positives

    def update(self, labels, scores, on_b, mask=None) -> Unpaired:
        """Labeled events, the score of the version that answered each, and whether it is on arm B."""
        on_b = np.asarray(on_b, dtype=np.float64)
        keep = np.ones_like(on_b) if mask is None else np.asarray(mask, dtype=np.float64)
        values = losses(labels, scores)
        for m in METRICS:
            self.arms[("a", m)].update(values[m], keep * (1 - on_b))
            self.arms[("b", m)].update(values[m], keep * on_b)
        self.positives = self.positives + ((np.asarray(labels, dtype=np.float64) >= 0.5) * keep).sum(axis=-1)
        return self

    def merge(self, other: Unpaired) -> Unpaired:
        return Unpaired(self.share_b, self.shape, {k: v.merge(other.arms[k]) for k, v in self.arms.items()},
                        self.positives + other.positives)

    def summary(self, settings: Settings | None = None) -> dict:
        s = settings or Settings()
        out = {}
        for m in METRICS:
            a, b = self.arms[("a", m)], self.arms[("b", m)]
            n = a.n + b.n
            both = (a.n > 1) & (b.n > 1)
            # The variance of the difference of means, times n: the per-observation scale the boundary takes
            # (unbounded until each arm has two values).
            v = a.var / np.maximum(a.n, 1) + b.var / np.maximum(b.n, 1)
            scale = np.where(both, np.sqrt(v * n), np.inf)
            out[m] = _summary(a.mean - b.mean, scale, n, self.positives, s.alpha, s.rho2, s.min_n, s.min_positives)
        return out

    def sample_ratio(self) -> dict:
        a, b = float(self.arms[("a", METRICS[0])].n), float(self.arms[("b", METRICS[0])].n)
        p = srm_p_value([a, b], [1 - self.share_b, self.share_b])
        return {"a": int(a), "b": int(b), "expected_share_b": self.share_b, "p_value": p, "mismatch": p < SRM_P}

    def report(self, settings: Settings | None = None) -> dict:
        s = settings or Settings()
        out = _report(self.summary(s), s, self.arms[("a", s.metric)].n + self.arms[("b", s.metric)].n,
                      kind="unpaired", positives=int(self.positives), sample_ratio=self.sample_ratio())
        if out["sample_ratio"]["mismatch"]:
            # The arms are not the split that was configured: their difference is not the version's effect.
            out["decision"] = STOP
        return out
