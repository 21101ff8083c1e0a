"""Backfilled window values into Feast's offline store.

`register_backfill` declares, for every stream view, an offline FeatureView
`<view>_backfill` over the parquet `sluice backfill` wrote (one row per event:
the values that event was scored with, stamped with its event time). Feast's
point-in-time join then returns, for an entity at time t, the values of its
latest event at or before t: exactly the served values at event times, a step
function in between (windows do not decay between events in a table of rows;
use `features_at` for exact values at arbitrary times).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from features.spec import FeaturePlan


def register_backfill(store, plan: FeaturePlan, parquet: Path) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from feast import FeatureView, Field, FileSource
        from feast.types import Float64

        source = FileSource(
            name="sluice_backfill", path=str(parquet), timestamp_field=plan.schema.timestamp_field
        )
        views = []
        for view in plan.stream_views:
            declared = store.get_stream_feature_view(view.name)
            entities = [store.get_entity(name) for name in declared.entities]
            # The backfill file names columns "view__feature"; Feast reads them under that name.
            views.append(
                FeatureView(
                    name=f"{view.name}_backfill",
                    entities=entities,
                    schema=[Field(name=f"{view.name}__{a.name}", dtype=Float64) for a in view.aggs],
                    source=source,
                    online=False,
                    ttl=None,
                    description=f"Backfilled values of {view.name}, as the Sluice worker computes them.",
                    tags={"sluice.backfill_of": view.name},
                )
            )
        store.apply([source, *views])
    return [v.name for v in views]
