"""What a tool needs from a use case to run Sluice on it: the workload interface.

`sluice bench`, `sluice parity` and `sluice chaos` know nothing of any
particular repo. A workload prepares a feature repo with a trained model
and produces events for it; everything else (which field keys the topic,
which one is the event id, which fields are entities) comes from the repo's
own definitions, read into a `FeaturePlan`. The card-fraud demo is one
workload (`fraud_demo.workload`); the CLI is what wires it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import orjson

from features.columns import EventColumns
from features.spec import FeaturePlan

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Prepared:
    """A feature repo that is applied, with its batch data and online store filled, and a model for it."""

    path: Path
    model_dir: Path
    about: dict = field(default_factory=dict)  # what the workload wants reported (entities, model version, AUC)


class Workload(Protocol):
    """A use case the tools can run: a repo and a model, events after its history, and past events."""

    name: str

    def prepare(self, work: Path, *, entities: int, seed: int, topic: str, trees: int) -> Prepared:
        """Write, apply and materialize a repo under `work` (its KafkaSource reading `topic`) and train a model."""
        ...

    def live_events(self, n: int, *, seed: int, disorder_ms: int = 0) -> list[bytes]:
        """`n` events after the prepared history, as JSON payloads in the order they arrive."""
        ...

    def history(self, n: int) -> pd.DataFrame:
        """`n` events before the end of the history, as a frame of the event schema's fields."""
        ...


def keyed(plan: FeaturePlan, payload: bytes) -> tuple[bytes, bytes, bytes]:
    """(Kafka key, payload, event id) of an event: the key is the plan's partition key, as producers key it."""
    event = orjson.loads(payload)
    return str(event[plan.partition_key]).encode(), payload, str(event[plan.schema.event_id]).encode()


def synthetic_columns(plan: FeaturePlan, n_entities: int, seed: int, start_ms: int, span_ms: int) -> EventColumns:
    """Two events per partition-key entity, in random entity order, times in order over `span_ms`.

    Made from the plan alone, for measurements that need many entities of
    any repo (state memory): other join keys get one value per 400
    entities (at least 50), numbers are log-normal, other text fields take
    one of six values, booleans are fair coins.
    """
    rng = np.random.default_rng(seed)
    n = 2 * n_entities
    keys = {k for v in (*plan.stream_views, *plan.batch_views) for k in v.join_keys}
    fields: dict[str, np.ndarray] = {}
    for name, kind in plan.schema.fields:
        if name == plan.schema.timestamp_field:
            continue
        if name == plan.partition_key:
            ids = np.array([f"{name}-{i:07d}" for i in range(n_entities)], dtype=object)
            fields[name] = ids[rng.permutation(np.repeat(np.arange(n_entities), 2))]
        elif name in keys:
            ids = np.array([f"{name}-{i:05d}" for i in range(max(50, n_entities // 400))], dtype=object)
            fields[name] = ids[rng.integers(0, len(ids), n)]
        elif name == plan.schema.event_id:
            fields[name] = np.array([f"e-{i}" for i in range(n)], dtype=object)
        elif kind == "double":
            fields[name] = np.round(rng.lognormal(3.5, 0.8, n), 2)
        elif kind == "long":
            fields[name] = rng.integers(0, 1000, n).astype(np.int64)
        elif kind == "bool":
            fields[name] = rng.random(n) < 0.5
        else:
            values = np.array([f"{name}-{i}" for i in range(6)], dtype=object)
            fields[name] = values[rng.choice(6, n, p=[0.8, 0.05, 0.05, 0.04, 0.04, 0.02])]
    ts = start_ms + np.sort(rng.integers(0, span_ms, n)).astype(np.int64)
    return EventColumns(ts, np.arange(n, dtype=np.int64), fields)
