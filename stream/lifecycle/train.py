"""`sluice train`: point-in-time-correct training data from the same definitions, then LightGBM.

Windowed features come from `features.offline` (the worker's own semantics,
replayed over the history); batch features from Feast's point-in-time join
(`get_historical_features`). A row is a training example only if its label
was known at the training cut-off, like in production.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import SluiceError
from features.feast_repo import load_plan, open_store
from features.offline import compute_features
from features.spec import FeaturePlan
from stream.lifecycle.evaluation import auc, best_f1_threshold
from stream.serving.model import save_model


@dataclass(frozen=True)
class TrainResult:
    version: str
    path: Path
    rows: int
    positives: int
    validation_auc: float
    threshold: float
    seconds: float


def history_path(store, plan: FeaturePlan, repo_path: Path) -> Path:
    view = store.get_stream_feature_view(plan.stream_views[0].name)
    path = Path(view.stream_source.batch_source.path)
    return path if path.is_absolute() else repo_path / path


def batch_features(store, plan: FeaturePlan, frame: pd.DataFrame) -> pd.DataFrame:
    """Feast point-in-time join of every batch view, aligned with `frame`'s rows."""
    if not plan.batch_views:
        return pd.DataFrame(index=frame.index)
    keys = sorted({k for v in plan.batch_views for k in v.join_keys})
    entity_df = frame[keys].copy()
    entity_df["event_timestamp"] = pd.to_datetime(frame[plan.schema.timestamp_field], utc=True)
    entity_df["_row"] = np.arange(len(frame))
    refs = [f"{v.name}:{f}" for v in plan.batch_views for f in v.features]
    joined = store.get_historical_features(entity_df=entity_df, features=refs, full_feature_names=True).to_df()
    joined = joined.sort_values("_row").set_index(frame.index)
    return joined[[f"{v.name}__{f}" for v in plan.batch_views for f in v.features]].astype("float64")


def training_frame(repo_path: Path, service: str | None, labels_path: Path | None, label_column: str | None):
    """(features in vector order, label, event time, plan) for rows whose label is known."""
    store = open_store(repo_path)
    plan = load_plan(store, service)
    history = pd.read_parquet(history_path(store, plan, repo_path))
    labels_path = labels_path or repo_path / plan.tags.get("sluice.labels_path", "data/labels.parquet")
    label_column = label_column or plan.tags.get("sluice.label_column", "label")
    labels = pd.read_parquet(labels_path)
    if label_column not in labels:
        msg = f"labels file {labels_path} has no column {label_column!r}; pass --label-column"
        raise SluiceError(msg)
    offline = compute_features(plan, history)
    frame = pd.concat([offline.frame, batch_features(store, plan, history)], axis=1)
    event_time = pd.to_datetime(history[plan.schema.timestamp_field], utc=True)
    cutoff = event_time.max()
    id_field = plan.schema.event_id
    known = labels[pd.to_datetime(labels["label_time"], utc=True) <= cutoff] if "label_time" in labels else labels
    label = history[id_field].map(known.set_index(id_field)[label_column])
    usable = offline.scored & label.notna().to_numpy()
    x = frame.loc[usable, list(plan.vector)]
    return x, label[usable].astype(int).to_numpy(), event_time[usable], plan, cutoff


def train(
    repo_path: str | Path,
    model_dir: str | Path,
    *,
    service: str | None = None,
    labels_path: str | Path | None = None,
    label_column: str | None = None,
    num_trees: int = 200,
    seed: int = 7,
) -> TrainResult:
    # Over 60 lines on purpose: the steps (frame, time split, fit, validate,
    # threshold, save) share the frame and read best in order; each is a few lines.
    import lightgbm as lgb

    started = time.perf_counter()
    repo_path = Path(repo_path)
    x, y, event_time, plan, cutoff = training_frame(
        repo_path, service, Path(labels_path) if labels_path else None, label_column
    )
    if len(x) < 100 or y.sum() < 5:
        msg = f"only {len(x)} labelled rows ({int(y.sum())} positive) are known at the cut-off; generate more history"
        raise SluiceError(msg)
    # Validate on the most recent fifth: the model is used on the future.
    order = np.argsort(event_time.to_numpy(), kind="stable")
    split = int(len(order) * 0.8)
    train_idx, valid_idx = order[:split], order[split:]
    params = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 63,
        "min_data_in_leaf": 20,
        "feature_fraction": 0.9,
        "seed": seed,
        "deterministic": True,
        "num_threads": 2,
        "verbose": -1,
    }
    names = list(plan.vector)
    data = lgb.Dataset(x.to_numpy()[train_idx], label=y[train_idx], feature_name=names, free_raw_data=False)
    booster = lgb.train(params, data, num_boost_round=num_trees)
    valid_scores = booster.predict(x.to_numpy()[valid_idx])
    valid_auc = auc(y[valid_idx], valid_scores)
    threshold = best_f1_threshold(y[valid_idx], valid_scores)
    version = datetime.now(tz=UTC).strftime("v%Y%m%d-%H%M%S")
    meta = {
        "feature_service": plan.service,
        "features": names,
        "training_window": {
            "start": event_time.min().isoformat(),
            "end": event_time.max().isoformat(),
            "cutoff": cutoff.isoformat(),
        },
        "label_definition": (
            f"{label_column or plan.tags.get('sluice.label_column', 'label')} from the labels file, "
            "only where label_time <= cutoff (labels arrive late; unknown rows are left out)"
        ),
        "rows": {"train": int(len(train_idx)), "validation": int(len(valid_idx)), "positives": int(y.sum())},
        "validation_auc": valid_auc,
        "threshold": threshold,
        "params": dict(params, num_trees=num_trees),
        "trained_at": datetime.now(tz=UTC).isoformat(),
    }
    path = save_model(model_dir, version, booster, meta)
    return TrainResult(version, path, len(x), int(y.sum()), valid_auc, threshold, time.perf_counter() - started)
