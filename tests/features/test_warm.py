"""A warm-started worker continues exactly where the history ended."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.columns import EventColumns, to_epoch_ms
from features.offline import compute_features
from features.online import StageAggregator
from features.warm import WarmLookup, warm_state


def _events(n, start_ms, seed):
    rng = np.random.default_rng(seed)
    ts = start_ms + np.sort(rng.integers(0, 60_000, n))
    return pd.DataFrame(
        {
            "id": [f"e{seed}-{i}" for i in range(n)],
            "card": [f"c{rng.integers(0, 6)}" for _ in range(n)],
            "merch": [f"m{rng.integers(0, 3)}" for _ in range(n)],
            "amount": rng.normal(10, 3, n).round(2),
            "t": pd.to_datetime(ts, unit="ms", utc=True),
        }
    )


class _Layered(dict):
    def __init__(self, warm):
        super().__init__()
        self.fallback = WarmLookup(warm)

    def get(self, key, default=None):
        value = super().get(key)
        return value if value is not None else self.fallback.get(key)


def test_warm_state_plus_live_equals_offline_over_history_and_live(small_plan):
    history, live = _events(300, 0, 1), _events(120, 60_000, 2)
    table = _Layered(warm_state(small_plan, history, batch=97))
    ts = to_epoch_ms(live["t"])
    cols = EventColumns(ts, np.arange(len(live), dtype=np.int64), {c: live[c].to_numpy() for c in live if c != "t"})
    stage0, stage1 = StageAggregator(small_plan, 0), StageAggregator(small_plan, 1)
    online = {}
    for start in range(0, len(live), 25):
        idx = np.arange(start, min(start + 25, len(live)))
        chunk = cols.take(idx)
        r0 = stage0.process(table, 0, chunk)
        table.update(r0.writes)
        keep = np.flatnonzero(~r0.late)
        r1 = stage1.process(
            table, 0, chunk.take(keep), sources=np.column_stack([np.zeros(len(keep), np.int64), chunk.seq[keep], r0.watermark[keep]]), n_sources=1
        )
        table.update(r1.writes)
        for name, values in r0.features.items():
            online.setdefault(name, np.full(len(live), np.nan))[idx] = values
        for name, values in r1.features.items():
            online.setdefault(name, np.full(len(live), np.nan))[idx[keep]] = values
    both = pd.concat([history, live], ignore_index=True)
    offline = compute_features(small_plan, both).frame.iloc[len(history) :]
    for name in offline:
        assert np.allclose(online[name], offline[name].to_numpy(), rtol=1e-9, atol=1e-9, equal_nan=True), name
    assert np.nansum(online["cv__n"]) > 0
