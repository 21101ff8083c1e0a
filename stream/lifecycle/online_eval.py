"""How each model version really performs, from the labels joined to what it served.

`WindowStats` holds one (version, route, window of prediction time): counts
of (score, label) pairs by distinct score (AUC exactly, ties averaged, as
`stream.lifecycle.evaluation.auc`), sums for log loss and the Brier score,
the confusion counts at the row's threshold, ten calibration bins, label
delays; and for every prediction of the window, labeled or not, its score,
which gives the estimate a window shows before its labels have matured:
if the scores are calibrated, a row is positive with probability its score,
and each metric's expected value follows (NannyML's CBPE). Everything is a
sum, so stats merge by adding, and a correction takes its old label back
(`sign=-1`).

Rows served by a deployment that explored also feed `decisions`: naive and
inverse-propensity-weighted precision and recall of the blocking decisions
(stream/lifecycle/ipw.py), in each report entry as `decisions`.

`OnlineEvaluation` feeds them from `prediction_log` and `labeled` records
(per version in `scores`: the serving one under the row's route, the others
as "shadow"), keeps one record of each (event id, kind, revision) (a crash
can send one twice), and reports per version, route and window, with
`provisional` set until the window is final (`window_final`).

Provisional or final has one definition, used by the worker's gauge
(`sluice_online_window_provisional`), the status page (which shows that
gauge) and `sluice models show`: a window of prediction (event) time is
final once the label clock (the largest label time seen) has reached its
end plus the FeatureService's label window (`sluice.label_window`, the
label join's `JoinConfig.window_ms`): every prediction in it has then had
its whole label window. Every reader must pass that label window; the
class default (7 days) is only the tag's default.
"""

from __future__ import annotations

import math
import bisect
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from stream.lifecycle.ipw import DecisionStats
from stream.pipeline.events import iso_ms, parse_timestamp_ms
from stream.pipeline.records import exploration

EPS = 1e-15
N_BINS = 10
#: Label delay histogram: bucket upper bounds in seconds (then +Inf).
DELAY_BOUNDS_S = (60, 600, 3600, 6 * 3600, 86_400, 3 * 86_400, 7 * 86_400, 14 * 86_400, 30 * 86_400, 60 * 86_400)


#: Calibration bins [b/10, (b+1)/10), the last one closed; b/10 is the double nearest, as a reader would write it.
_EDGES = [b / N_BINS for b in range(1, N_BINS)]


def _bin(p: float) -> int:
    return bisect.bisect_right(_EDGES, p)


def _auc_from_counts(by_score: dict) -> float:
    """Rank-sum AUC from {score: [negatives, positives]} (ties count half)."""
    pos = sum(c[1] for c in by_score.values())
    neg = sum(c[0] for c in by_score.values())
    if pos <= 0 or neg <= 0:
        return math.nan
    below, hits = 0.0, 0.0
    for s in sorted(by_score):
        n0, n1 = by_score[s]
        hits += n1 * (below + 0.5 * n0)
        below += n0
    return hits / (pos * neg)


@dataclass
class WindowStats:
    labeled: dict = field(default_factory=dict)  # score -> [negatives, positives]
    n: float = 0.0
    positives: float = 0.0
    log_loss_sum: float = 0.0
    brier_sum: float = 0.0
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    tn: float = 0.0
    # Plain lists, not numpy: one row at a time, a small numpy operation costs more than the rest of the update.
    bins: list = field(default_factory=lambda: [[0.0, 0.0, 0.0] for _ in range(N_BINS)])  # rows, sum of scores, of labels
    delays: list = field(default_factory=lambda: [0] * (len(DELAY_BOUNDS_S) + 1))
    delay_sum_s: float = 0.0
    predictions: float = 0.0
    predicted: dict = field(default_factory=dict)  # score -> predictions (labeled or not)
    expected: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # expected TP, FP, FN at the threshold

    def add_labeled(self, score: float, label: float, threshold: float, sign: int = 1) -> None:
        y = 1.0 if label >= 0.5 else 0.0
        cell = self.labeled.setdefault(score, [0, 0])
        cell[int(y)] += sign
        if cell == [0, 0]:
            del self.labeled[score]
        p = min(max(score, EPS), 1 - EPS)
        self.n += sign
        self.positives += sign * y
        self.log_loss_sum -= sign * (y * math.log(p) + (1 - y) * math.log(1 - p))
        self.brier_sum += sign * (score - y) ** 2
        if not math.isnan(threshold):
            hit = score >= threshold
            if hit and y:
                self.tp += sign
            elif hit:
                self.fp += sign
            elif y:
                self.fn += sign
            else:
                self.tn += sign
        b = self.bins[_bin(score)]
        b[0] += sign
        b[1] += sign * score
        b[2] += sign * y

    def add_delay(self, delay_s: float) -> None:
        self.delays[bisect.bisect_left(DELAY_BOUNDS_S, delay_s)] += 1
        self.delay_sum_s += delay_s

    def add_prediction(self, score: float, threshold: float) -> None:
        self.predictions += 1
        self.predicted[score] = self.predicted.get(score, 0) + 1
        if not math.isnan(threshold):
            e = self.expected
            if score >= threshold:
                e[0] += score
                e[1] += 1 - score
            else:
                e[2] += score

    def merge(self, other: WindowStats) -> WindowStats:
        out = WindowStats()
        for part in (self, other):
            for s, (n0, n1) in part.labeled.items():
                cell = out.labeled.setdefault(s, [0, 0])
                cell[0] += n0
                cell[1] += n1
            for s, n in part.predicted.items():
                out.predicted[s] = out.predicted.get(s, 0) + n
            for name in ("n", "positives", "log_loss_sum", "brier_sum", "tp", "fp", "fn", "tn", "delay_sum_s", "predictions"):
                setattr(out, name, getattr(out, name) + getattr(part, name))
            out.bins = [[a + b for a, b in zip(x, y)] for x, y in zip(out.bins, part.bins)]
            out.delays = [a + b for a, b in zip(out.delays, part.delays)]
            out.expected = [a + b for a, b in zip(out.expected, part.expected)]
        return out

    # -- values ---------------------------------------------------------------

    def metrics(self) -> dict:
        """Realized values on the labeled rows (NaN where undefined)."""
        n = self.n
        tp, fp, fn = self.tp, self.fp, self.fn
        bins = np.array(self.bins)
        rows, sum_p, sum_y = bins[:, 0], bins[:, 1], bins[:, 2]
        filled = rows > 0
        ece = float(np.sum(np.abs(sum_p[filled] - sum_y[filled])) / n) if n else math.nan
        return {
            "auc": _auc_from_counts(self.labeled),
            "log_loss": self.log_loss_sum / n if n else math.nan,
            "brier": self.brier_sum / n if n else math.nan,
            "precision": tp / (tp + fp) if tp + fp else math.nan,
            "recall": tp / (tp + fn) if tp + fn else math.nan,
            "calibration_error": ece,
            "labeled": int(n),
            "positives": int(self.positives),
        }

    def estimate(self) -> dict:
        """The same metrics expected from the scores of every prediction, were they calibrated (CBPE)."""
        scores = np.array(sorted(self.predicted), dtype=np.float64)
        counts = np.array([self.predicted[s] for s in sorted(self.predicted)], dtype=np.float64)
        total = counts.sum()
        if not total:
            return {"auc": math.nan, "log_loss": math.nan, "brier": math.nan, "precision": math.nan, "recall": math.nan}
        pos, neg = counts * scores, counts * (1 - scores)
        below = np.cumsum(neg) - neg
        auc = float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum())) if pos.sum() and neg.sum() else math.nan
        p = np.clip(scores, EPS, 1 - EPS)
        etp, efp, efn = self.expected
        return {
            "auc": auc,
            "log_loss": float(np.sum(counts * -(p * np.log(p) + (1 - p) * np.log(1 - p))) / total),
            "brier": float(np.sum(counts * scores * (1 - scores)) / total),
            "precision": float(etp / (etp + efp)) if etp + efp else math.nan,
            "recall": float(etp / (etp + efn)) if etp + efn else math.nan,
        }

    def delay(self) -> dict:
        delays = np.array(self.delays, dtype=np.float64)
        count = delays.sum()
        if not count:
            return {"count": 0, "mean_s": math.nan, "p50_le_s": math.nan}
        median = int(np.searchsorted(np.cumsum(delays), count / 2, side="left"))
        bound = DELAY_BOUNDS_S[median] if median < len(DELAY_BOUNDS_S) else math.inf
        return {"count": int(count), "mean_s": self.delay_sum_s / count, "p50_le_s": float(bound)}


def window_final(window_end_ms: int, clock_ms: int | None, label_window_ms: int) -> bool:
    """Whether a window of prediction time ending at `window_end_ms` (exclusive) is final (see the module docstring)."""
    return clock_ms is not None and clock_ms >= window_end_ms + label_window_ms


def _num(x) -> float:
    return math.nan if x is None else float(x)


class OnlineEvaluation:
    """Stats per (version, route, window start) from prediction_log and labeled records."""

    def __init__(self, id_field: str, *, window_ms: int = 86_400_000, label_window_ms: int = 7 * 86_400_000):
        self.id_field, self.window_ms, self.label_window_ms = id_field, window_ms, label_window_ms
        self.stats: dict[tuple[str, str, int], WindowStats] = defaultdict(WindowStats)
        # Blocking decisions, naive and weighted, of rows served by a deployment that explored (stream/lifecycle/ipw.py).
        self.decisions: dict[tuple[str, str, int], DecisionStats] = defaultdict(DecisionStats)
        self.clock_ms: int | None = None  # the largest label time seen
        self._seen: set[tuple[str, str, int]] = set()
        self._predicted: set[str] = set()

    def _window(self, event_ms: int) -> int:
        return event_ms - event_ms % self.window_ms

    @staticmethod
    def _versions(record: dict):
        """(version, route, score) for every version that scored the row."""
        served = record["model_version"]
        scores = record.get("scores") or ({served: record["score"]} if record.get("score") is not None else {})
        for version, score in scores.items():
            if score is not None:
                yield version, (record.get("route") or "champion") if version == served else "shadow", float(score)

    def add_prediction(self, record: dict, dedupe: bool = True) -> None:
        """A prediction_log record (every prediction counts towards coverage and the estimate).

        `dedupe=False` where the caller already sees each once (the label join does).
        """
        if dedupe:
            event_id = str(record[self.id_field])
            if event_id in self._predicted:
                return  # the worker re-sent it after a crash
            self._predicted.add(event_id)
        window = self._window(parse_timestamp_ms(record["event_time"]))
        threshold = _num(record.get("threshold"))
        for version, route, score in self._versions(record):
            self.stats[(version, route, window)].add_prediction(score, threshold if route != "shadow" else math.nan)

    def add_labeled(self, record: dict, dedupe: bool = True) -> None:
        """A labeled record; kinds other than rows with a prediction only move the label clock."""
        if dedupe:
            key = (str(record[self.id_field]), record["kind"], int(record["revision"]))
            if key in self._seen:
                return
            self._seen.add(key)
        if record.get("label_time"):
            at = parse_timestamp_ms(record["label_time"])
            self.clock_ms = at if self.clock_ms is None else max(self.clock_ms, at)
        if "features" not in record or record["kind"] not in ("joined", "correction", "unlabeled"):
            return
        event_ms = parse_timestamp_ms(record["event_time"])
        window, threshold = self._window(event_ms), _num(record.get("threshold"))
        label, previous = record.get("label"), record.get("previous_label")
        first_label = record["kind"] == "joined" or record.get("previous_label_source") == "window"
        for version, route, score in self._versions(record):
            stats = self.stats[(version, route, window)]
            cut = threshold if route != "shadow" else math.nan
            if record["kind"] == "correction" and previous is not None:
                stats.add_labeled(score, float(previous), cut, sign=-1)
            if label is not None:
                stats.add_labeled(score, float(label), cut)
            if first_label and record.get("label_source") == "label" and record.get("label_time"):
                stats.add_delay((parse_timestamp_ms(record["label_time"]) - event_ms) / 1000)
        if "propensity" in record and record.get("model_version"):
            self._add_decision(record, window, label, previous)

    def _add_decision(self, record: dict, window: int, label, previous) -> None:
        stats = self.decisions[(record["model_version"], record.get("route") or "champion", window)]
        would_block, explored, propensity = exploration(record)
        if record["kind"] == "correction" and previous is not None:
            stats.add(would_block, explored, propensity, float(previous), sign=-1)
        if label is not None:
            stats.add(would_block, explored, propensity, float(label))

    def observe_clock(self, ms: int) -> None:
        self.clock_ms = ms if self.clock_ms is None else max(self.clock_ms, ms)

    def prune(self, keep_ms: int | None = None) -> None:
        """Forget windows that matured more than `keep_ms` (default: one label window) ago."""
        if self.clock_ms is None:
            return
        keep = self.label_window_ms if keep_ms is None else keep_ms
        horizon = self.clock_ms - self.label_window_ms - keep - self.window_ms
        for key in [k for k in self.stats if k[2] < horizon]:
            del self.stats[key]
        for key in [k for k in self.decisions if k[2] < horizon]:
            del self.decisions[key]

    def combined(self, version: str, route: str | None = None) -> WindowStats:
        """Every window of a version (and route) merged into one."""
        out = WindowStats()
        for (v, r, _), stats in self.stats.items():
            if v == version and (route is None or r == route):
                out = out.merge(stats)
        return out

    def report(self) -> list[dict]:
        """One entry per (version, route, window): realized metrics, the estimate, coverage, delay, provisional.

        Windows start at multiples of `window_ms` of prediction (event) time;
        `final_at` is the label-clock time at which a window becomes final;
        `estimate_error` (realized - estimate) is set once a window has matured.
        """
        out = []
        for (version, route, start), stats in sorted(self.stats.items()):
            end = start + self.window_ms
            matured = window_final(end, self.clock_ms, self.label_window_ms)
            realized, estimate = stats.metrics(), stats.estimate()
            out.append({
                "version": version, "route": route, "window_start": iso_ms(start), "window_end": iso_ms(end),
                "provisional": not matured, "final_at": iso_ms(end + self.label_window_ms),
                "predictions": int(stats.predictions),
                "coverage": stats.n / stats.predictions if stats.predictions else math.nan,
                "metrics": realized, "estimate": estimate, "label_delay": stats.delay(),
                # Once matured: how far the estimate shown before was from what the labels say.
                "estimate_error": None if not matured else {k: realized[k] - v for k, v in estimate.items()},
            })
            if (version, route, start) in self.decisions:
                out[-1]["decisions"] = self.decisions[(version, route, start)].values()
        return out

    def combined_decisions(self, version: str, route: str | None = None) -> DecisionStats:
        """Every window's blocking decisions of a version (and route) merged into one."""
        out = DecisionStats()
        for (v, r, _), stats in self.decisions.items():
            if v == version and (route is None or r == route):
                out = out.merge(stats)
        return out
