"""What `sluice monitor` knows of the models it watches: features, references, boosters, training entities.

Everything is read from where the worker fetches its versions: the model
registry (SLUICE_REGISTRY, e.g. MLflow) when it is set, else the model
directory (one folder per version); and, for the entities, from the feature repo's history
parquet: the entity keys of the events inside the model's training window
(`training_window` in model.json), hashed into a `stream.monitor.quality.EntitySet`
(8 bytes a key), computed once per version when its first record arrives.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from features.errors import SluiceError
from stream.monitor.quality import EntitySet
from stream.registry import LocalStore, ModelStore, local_folder, open_store
from stream.serving.model import META_FILE, load_model

log = logging.getLogger("sluice.monitor")


class ModelShelf:
    def __init__(
        self, store: ModelStore | Path, repo_path: Path | None = None, feature_service: str | None = None, *,
        registry: str | None = None,
    ):
        """`store`: the process's registry handle (or a model directory); `registry` (a SLUICE_REGISTRY value) overrides it."""
        self.store = open_store(registry or store)
        if registry or not isinstance(self.store, LocalStore):
            self.where = f"registry {registry or getattr(self.store, 'uri', self.store)}"
        else:
            self.where = f"model directory {self.store.root}"
        self.folder = local_folder(self.store)
        self.repo_path = Path(repo_path) if repo_path is not None else None
        self.feature_service = feature_service
        self._meta: dict[str, dict] = {}
        self._models: dict[str, object] = {}
        self._plan = None
        self._history: Path | None = None

    def meta(self, version: str) -> dict:
        if version not in self._meta:
            try:
                path = self.folder(version) / META_FILE
                self._meta[version] = json.loads(path.read_text())
            except (OSError, ValueError, SluiceError) as exc:
                msg = (f"cannot read model version {version} from the {self.where} ({exc}); is it where the worker "
                       "fetches its versions (SLUICE_REGISTRY, --model-dir)?")
                raise FileNotFoundError(msg) from exc
        return self._meta[version]

    def describe(self, version: str) -> tuple[list[str], dict | None]:
        meta = self.meta(version)
        return list(meta["features"]), meta.get("reference")

    def model(self, version: str):
        """The verified model (stream.serving.model.load_model), loaded once."""
        if version not in self._models:
            self._models[version] = load_model(self.folder(version))
        return self._models[version]

    # -- the feature repo ---------------------------------------------------

    def plan(self):
        """The repo's FeaturePlan, or None without a repo (batch views and training entities are then unknown)."""
        if self._plan is None and self.repo_path is not None:
            if not (self.repo_path / "feature_store.yaml").exists():
                log.warning("monitor: no feature repo at %s; defaulted batch features and "
                            "unseen entities are not judged", self.repo_path)
                self.repo_path = None
                return None
            from features.feast_repo import load_plan, open_store
            from stream.lifecycle.train import history_path

            store = open_store(self.repo_path)
            self._plan = load_plan(store, self.feature_service)
            self._history = history_path(store, self._plan, self.repo_path)
        return self._plan

    def batch_views(self) -> dict[str, list[str]]:
        plan = self.plan()
        if plan is None:
            return {}
        return {v.name: [f"{v.name}__{f}" for f in v.features] for v in plan.batch_views}

    def events_topic(self) -> str | None:
        plan = self.plan()
        return plan.schema.topic if plan is not None else None

    def entities(self, version: str) -> dict[str, EntitySet]:
        """Entity key -> the keys in the model's training window; {} when the history cannot be read."""
        plan = self.plan()
        if plan is None or self._history is None:
            return {}
        try:
            import pandas as pd

            keys = list(dict.fromkeys(k for v in (*plan.stream_views, *plan.batch_views) for k in v.join_keys))
            ts = plan.schema.timestamp_field
            started = time.perf_counter()
            frame = pd.read_parquet(self._history, columns=[*keys, ts])
            window = self.meta(version).get("training_window") or {}
            times = pd.to_datetime(frame[ts], utc=True)
            inside = np.ones(len(frame), dtype=bool)
            if window.get("start"):
                inside &= (times >= pd.Timestamp(window["start"])).to_numpy()
            if window.get("end"):
                inside &= (times <= pd.Timestamp(window["end"])).to_numpy()
            sets = {k: EntitySet.from_keys(frame.loc[inside, k].astype(str).tolist()) for k in keys}
        except Exception as exc:  # noqa: BLE001 - unseen-entity shares are left out, and said once
            log.warning("model %s: training entities not read from %s (%s); unseen-entity shares are off", version, self._history, exc)
            return {}
        log.warning(
            "model %s: training entities from %s (%s), %.1f s", version, self._history,
            ", ".join(f"{len(s):,} {k}" for k, s in sets.items()), time.perf_counter() - started,
        )
        return sets


class AttributionBudget:
    """The share of events to attribute so that contributions cost about `core_share` of one core.

    cost per row (measured on every call, averaged) x events per second x
    share = core_share; the share is recomputed after every call.
    """

    def __init__(self, core_share: float = 0.05, first_share: float = 0.001):
        self.core_share = core_share
        self.share = first_share if core_share > 0 else 0.0
        self.seconds_per_row: float | None = None
        self.events_per_s: float | None = None
        self.spent_s = 0.0

    def saw(self, events: int, elapsed_s: float) -> None:
        if elapsed_s <= 0 or not events:
            return
        rate = events / elapsed_s
        self.events_per_s = rate if self.events_per_s is None else 0.8 * self.events_per_s + 0.2 * rate
        self._update()

    def spent(self, rows: int, seconds: float) -> None:
        self.spent_s += seconds
        if rows:
            per_row = seconds / rows
            self.seconds_per_row = per_row if self.seconds_per_row is None else 0.7 * self.seconds_per_row + 0.3 * per_row
        self._update()

    def _update(self) -> None:
        if self.core_share <= 0 or self.seconds_per_row is None or not self.events_per_s:
            return
        self.share = float(np.clip(self.core_share / (self.seconds_per_row * self.events_per_s), 1e-6, 1.0))
