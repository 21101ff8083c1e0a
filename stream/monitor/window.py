"""One model version's sliding window: feature and score histograms, quality counters, attributions.

Everything a window is judged on lives in two rings (stream.monitor.histograms)
with the same sub-windows: counts (bins of every feature and of the score;
events; values outside the training range per feature; events with
defaulted batch features per batch view; events with an entity training
never saw per entity key) and the sums of |contribution| per feature over
the rows sampled for attribution (and their number). Memory is bounded by
(bins + counters) x sub-windows.
"""

from __future__ import annotations

import numpy as np

from stream.monitor import drift
from stream.monitor.alerts import Check
from stream.monitor.baseline import Baseline
from stream.monitor.histograms import CATEGORICAL, Layout, Ring
from stream.monitor.quality import EntitySet
from stream.monitor.thresholds import Thresholds

#: Sampled rows waiting for their contributions, at most (the rest are not sampled).
MAX_PENDING_SAMPLES = 4096


class VersionWindow:
    def __init__(
        self, baseline: Baseline, thresholds: Thresholds, batch_views: dict[str, list[str]] | None = None,
        entities: dict[str, EntitySet] | None = None,
    ):
        self.baseline, self.thresholds = baseline, thresholds
        self.names = baseline.names
        index = {n: j for j, n in enumerate(self.names)}
        # Batch views whose features this model uses: view -> column numbers.
        self.batch_views = {
            v: [index[f] for f in fs if f in index] for v, fs in (batch_views or {}).items() if any(f in index for f in fs)
        }
        self.entities = dict(entities or {})
        counters = ["events", *(f"oor:{n}" for n in self.names), *(f"defaulted:{v}" for v in self.batch_views)]
        counters += [f"unseen:{k}" for k in self.entities]
        self.layout = Layout([*baseline.features, baseline.score], counters)
        # The rings hold a window and as much again: a window is judged once
        # every partition has passed it, and until then faster partitions
        # already fill later sub-windows.
        self.span = thresholds.windows.sub_windows
        self.counts = Ring(self.layout.width, 2 * self.span)
        self.attribution = Ring(len(self.names) + 1, 2 * self.span, np.float64)
        self.spans: dict[int, list[int]] = {}  # sub-window -> [first, last] event time (ms)
        self.first_bucket: int | None = None
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []  # (buckets, rows) sampled for attribution
        self.pending_rows = 0
        self.dropped = 0  # events of sub-windows that had already left the ring

    def add(
        self, event_ms: np.ndarray, matrix: np.ndarray, scores: np.ndarray,
        batch_missing: dict[str, np.ndarray] | None = None, entity_keys: dict[str, list[str]] | None = None,
        sample: np.ndarray | None = None,
    ) -> None:
        """A batch of events this version scored: times, feature rows (model order), its scores.

        `batch_missing`: view -> bool per event (the view had no online row),
        inferred from missing values when not given; `entity_keys`: key
        name -> values; `sample`: bool per event, rows to attribute.
        """
        n = len(event_ms)
        if not n:
            return
        event_ms = np.asarray(event_ms, dtype=np.int64)
        bucket = event_ms // self.thresholds.windows.sub_window_ms
        layout, counters = self.layout, self.layout.counters
        columns = [matrix[:, j] for j in range(len(self.names))] + [np.asarray(scores, dtype=np.float64)]
        parts = [layout.slots(columns), np.full((n, 1), counters["events"])]
        oor = np.column_stack([b.out_of_range(matrix[:, j]) for j, b in enumerate(self.baseline.features)])
        parts.append(np.where(oor, [counters[f"oor:{name}"] for name in self.names], -1))
        for view, cols in self.batch_views.items():
            missing = batch_missing.get(view) if batch_missing is not None else None
            if missing is None:
                missing = np.isnan(matrix[:, cols]).all(axis=1)
            parts.append(np.where(missing, counters[f"defaulted:{view}"], -1)[:, None])
        for key, known in self.entities.items():
            values = (entity_keys or {}).get(key)
            if values is not None:
                parts.append(np.where(known.seen(values), -1, counters[f"unseen:{key}"])[:, None])
        self.dropped += self.counts.add(bucket, np.hstack(parts))
        self._note_spans(bucket, event_ms)
        if sample is not None and sample.any() and self.pending_rows < MAX_PENDING_SAMPLES:
            take = np.flatnonzero(sample)[: MAX_PENDING_SAMPLES - self.pending_rows]
            self.pending.append((bucket[take], np.array(matrix[take], dtype=np.float64)))
            self.pending_rows += len(take)

    def _note_spans(self, bucket: np.ndarray, event_ms: np.ndarray) -> None:
        low = int(bucket.min())
        self.first_bucket = low if self.first_bucket is None else min(self.first_bucket, low)
        for b in np.unique(bucket).tolist():
            times = event_ms[bucket == b]
            span = self.spans.setdefault(b, [int(times.min()), int(times.max())])
            span[0], span[1] = min(span[0], int(times.min())), max(span[1], int(times.max()))
        floor = (self.counts.newest or 0) - self.counts.length
        for b in [b for b in self.spans if b <= floor]:
            del self.spans[b]

    def take_samples(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(buckets, rows) waiting for contributions, or None."""
        if not self.pending:
            return None
        buckets = np.concatenate([b for b, _ in self.pending])
        rows = np.vstack([r for _, r in self.pending])
        self.pending, self.pending_rows = [], 0
        return buckets, rows

    def add_contributions(self, buckets: np.ndarray, contributions: np.ndarray) -> None:
        """|contribution| per feature of sampled rows (n x features, without LightGBM's bias column)."""
        values = np.hstack([np.abs(contributions), np.ones((len(buckets), 1))])
        self.attribution.add_values(buckets, values)

    def evaluate(self, last: int) -> list[Check]:
        """Every statistic of the window ending with sub-window `last` (none until the window is full)."""
        windows = self.thresholds.windows
        length = self.span
        if self.first_bucket is None or self.first_bucket > last - length + 1:
            return []
        totals = self.counts.total(last, length)
        events = int(totals[self.layout.counters["events"]])
        if events < windows.min_events:
            return []
        inside = [s for b, s in self.spans.items() if last - length < b <= last]
        sub_ms = windows.sub_window_ms
        window = {"start": _iso((last - length + 1) * sub_ms), "end": _iso((last + 1) * sub_ms), "events": events,
                  "sub_windows": length, "time": "event"}
        first = _iso(min(s[0] for s in inside)) if inside else None
        last_seen = _iso(max(s[1] for s in inside)) if inside else None
        version = self.baseline.version

        def check(feature: str, statistic: str, value: float, reference: float | None = None, floor: float = 0.0) -> Check:
            return Check(version, feature, statistic, float(value), reference, window, first, last_seen, floor)

        checks = self._drift(totals, events, check)
        checks += self._quality(totals, events, check)
        checks += self._attribution(last, check)
        return checks

    def _drift(self, totals: np.ndarray, events: int, check) -> list[Check]:
        out = []
        binnings = self.layout.binnings
        tests = sum(1 if b.kind == CATEGORICAL else 2 for b in binnings)
        alpha = self.thresholds.windows.alpha
        for j, binning in enumerate(binnings):
            counts, reference = self.layout.counts(totals, j), binning.reference
            m = float(reference.sum())
            stats = ("linf",) if binning.kind == CATEGORICAL else ("psi", "js")
            for statistic in stats:
                value = getattr(drift, {"linf": "linf", "psi": "psi", "js": "js_divergence"}[statistic])(counts, reference)
                floor = drift.noise_floor(statistic, events, m, binning.n_bins, alpha, tests)
                out.append(check(binning.name, statistic, value, floor=floor))
        return out

    def _quality(self, totals: np.ndarray, events: int, check) -> list[Check]:
        counters, out = self.layout.counters, []
        for j, binning in enumerate(self.baseline.features):
            counts = self.layout.counts(totals, j)
            ref_missing = binning.reference[-1] / max(binning.reference.sum(), 1.0)
            out.append(check(binning.name, "missing_share", counts[-1] / events, float(ref_missing)))
            out.append(check(binning.name, "out_of_range_share", totals[counters[f"oor:{binning.name}"]] / events))
        for view, cols in self.batch_views.items():
            share = totals[counters[f"defaulted:{view}"]] / events
            out += [check(self.names[j], "defaulted_share", share) for j in cols]
        for key in self.entities:
            out.append(check(key, "unseen_entity_share", totals[counters[f"unseen:{key}"]] / events))
        return out

    def _attribution(self, last: int, check) -> list[Check]:
        reference = self.baseline.contributions
        sums = self.attribution.total(last, self.span)
        rows = sums[-1]
        if not reference:
            return []
        out = [check("attribution", "attributed_rows", rows)]
        if rows < self.thresholds.windows.min_attribution_rows:
            return out
        mean = dict(zip(self.names, (sums[:-1] / rows).tolist()))
        out.append(check("attribution", "ndcg", drift.ndcg(reference, mean)))
        out += [check(n, "mean_abs_contribution", v, reference.get(n)) for n, v in mean.items()]
        return out

    @property
    def nbytes(self) -> int:
        return self.counts.nbytes + self.attribution.nbytes


def _iso(ms: int) -> str:
    return np.datetime_as_string(np.datetime64(int(ms), "ms"), unit="ms") + "Z"
