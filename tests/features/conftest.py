"""Fixtures of the feature tests: a small two-stage plan (cards, merchants) and its event columns."""

from __future__ import annotations

import numpy as np
import pytest

from features.columns import EventColumns
from features.spec import EventSchema, FeaturePlan, StreamView, make_agg

SCHEMA = EventSchema(
    fields=(("id", "string"), ("card", "string"), ("merch", "string"), ("amount", "double"), ("t", "timestamp")),
    event_id="id",
    timestamp_field="t",
    topic="events",
    allowed_lateness_ms=1000,
)
PLAN = FeaturePlan(
    service="s",
    schema=SCHEMA,
    stream_views=(
        StreamView("cv", ("card",), (make_agg("cv", "n", "count", "amount", 10_000, None), make_agg("cv", "s", "sum", "amount", 10_000, 5_000))),
        StreamView("mv", ("merch",), (make_agg("mv", "n", "count", "amount", 10_000, None),)),
    ),
    batch_views=(),
    vector=(),
    partition_key="card",
)


def _events(offsets, ts, cards, merchs):
    return EventColumns(
        np.array(ts, dtype=np.int64),
        np.array(offsets, dtype=np.int64),
        {
            "card": np.array(cards, dtype=object),
            "merch": np.array(merchs, dtype=object),
            "amount": np.arange(1.0, len(ts) + 1),
        },
    )


@pytest.fixture
def small_plan() -> FeaturePlan:
    """Stage 0 by card (count and a hopping sum over 10 s), stage 1 by merchant (count over 10 s)."""
    return PLAN


@pytest.fixture
def small_events():
    """Factory: EventColumns of `small_plan` from offsets, times (ms), cards and merchants; amounts 1, 2, 3, ..."""
    return _events
