"""`sluice train`: point-in-time-correct training data from the same definitions, then LightGBM.

Windowed features come from `features.offline` (the worker's own semantics,
replayed over the history); batch features from Feast's point-in-time join
(`get_historical_features`). A row is a training example only if its label
was known at the training cut-off, like in production, and only if its
label is final by then: labels of both classes must have had time to
arrive (see `mature_rows`), or the most recent rows would be positives only.

The model is reproducible: the same data and seed give the same model.txt,
byte for byte (deterministic LightGBM, fixed threads and histogram layout).
It is published to a model store (a model directory or MLflow) with its
metadata: the threshold rule and what it achieved on validation data,
validation metrics, the reference distributions for the drift monitor,
parent, trigger and seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import SluiceError
from features.feast_repo import load_plan, open_store
from features.offline import compute_features
from features.spec import FeaturePlan
from stream.lifecycle.archive_history import EVENT_TIME, order_of, read_archive
from stream.lifecycle.evaluation import alert_rate_threshold, binary_metrics, precision_threshold
from stream.lifecycle.reference import reference
from stream.registry import CHAMPION, ModelStore
from stream.registry import open_store as open_model_store

#: LightGBM settings. Fraud is rare (about 0.2% of rows, in bursts of a few
#: cards), so leaves are kept large and leaf values shrunk: with 63 leaves of
#: 20 rows, validation AUC swung between 0.78 and 0.99 with the seed alone
#: and hundreds of validation rows scored exactly 1.0. All features are used
#: in every tree (the seed then changes nothing but what it is recorded as).
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 100,
    "min_sum_hessian_in_leaf": 1.0,
    "lambda_l2": 10.0,
    "feature_fraction": 1.0,
    "deterministic": True,
    "force_row_wise": True,  # else LightGBM times both layouts and picks one: not reproducible
    "num_threads": 2,
    "verbose": -1,
}
#: TreeSHAP contributions for the reference are computed on at most this many validation rows.
CONTRIBUTION_ROWS = 2000


@dataclass(frozen=True)
class ThresholdRule:
    """How the decision threshold is chosen on validation data: an alert rate or a precision to reach."""

    kind: str = "alert_rate"  # "alert_rate": alert on at most `target` of rows; "precision": the most recall at >= target
    target: float = 0.005

    def __post_init__(self):
        if self.kind not in ("alert_rate", "precision") or not 0.0 < self.target <= 1.0:
            msg = f"threshold rule {self.kind}={self.target}: use alert_rate or precision with a target in (0, 1]"
            raise SluiceError(msg)

    def threshold(self, labels: np.ndarray, scores: np.ndarray) -> float:
        if self.kind == "alert_rate":
            return alert_rate_threshold(scores, self.target)
        return precision_threshold(labels, scores, self.target)


@dataclass(frozen=True)
class TrainingFrame:
    x: pd.DataFrame  # features in vector order
    y: np.ndarray  # 0/1
    event_time: pd.Series
    plan: FeaturePlan
    cutoff: pd.Timestamp  # the history's last event time: what was known when training
    label_maturity: pd.Timedelta  # rows newer than cutoff - this were left out (labels not final)
    categorical: frozenset[str]  # vector names Feast types as String or Bool
    weight: np.ndarray | None = None  # per row (labeled_train: 1/propensity of explored blocks); None: all 1
    order: str = EVENT_TIME  # how the history's events arrived: ARRIVAL_ARCHIVE (from an events archive) or EVENT_TIME


@dataclass(frozen=True)
class TrainResult:
    version: str
    path: Path
    rows: int
    positives: int
    validation_auc: float
    threshold: float
    seconds: float
    meta: dict = field(default_factory=dict, repr=False)


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


def categorical_features(store, plan: FeaturePlan) -> frozenset[str]:
    """Batch features whose Feast type is String or Bool (the plan does not carry batch feature types)."""
    found = set()
    for view in plan.batch_views:
        for f in store.get_feature_view(view.name).schema:
            if f.name in view.features and str(f.dtype) in ("String", "Bool"):
                found.add(f"{view.name}__{f.name}")
    return frozenset(found)


def mature_rows(event_time: pd.Series, label: pd.Series, label_time: pd.Series | None, cutoff) -> tuple[np.ndarray, pd.Timedelta]:
    """Rows whose label is final at `cutoff`, and the label maturity used.

    A negative ("no chargeback") is known only when its window closes, a
    positive as soon as it is reported; so near the cut-off the known labels
    are positives only. Maturity is the longest delay of a known negative:
    rows younger than that are left out, both classes alike.
    """
    if label_time is None:
        return np.ones(len(event_time), dtype=bool), pd.Timedelta(0)
    delay = (label_time - event_time)[label == 0]
    maturity = delay.max() if delay.notna().any() else pd.Timedelta(0)
    return (event_time <= cutoff - maturity).to_numpy(), maturity


def training_frame(
    repo_path: Path, service: str | None, labels_path: Path | None, label_column: str | None,
    archive: Path | None = None, features=compute_features,
) -> TrainingFrame:
    """The labelled, mature rows of the history with their features in vector order.

    With `archive` (an events archive), the history is what arrived on the
    events topic, in arrival order: the features are the ones served.
    Without, the repo's history in event-time order. `features(plan,
    history, history_path)` gives the windowed features of a repo history
    (`compute_features`' OfflineFeatures); the out-of-core driver
    (stream/tools/batch.py, `sluice train --shards/--ray`) computes the same
    values a shard at a time. An archive is computed in memory.
    """
    store = open_store(repo_path)
    plan = load_plan(store, service)
    if archive is not None:
        source, history = None, read_archive(archive, plan).frame
    else:
        source = history_path(store, plan, repo_path)
        history = pd.read_parquet(source)
    labels_path = labels_path or repo_path / plan.tags.get("sluice.labels_path", "data/labels.parquet")
    label_column = label_column or plan.tags.get("sluice.label_column", "label")
    labels = pd.read_parquet(labels_path)
    if label_column not in labels:
        msg = f"labels file {labels_path} has no column {label_column!r}; pass --label-column"
        raise SluiceError(msg)
    in_memory = features is compute_features or source is None
    offline = compute_features(plan, history) if in_memory else features(plan, history, source)
    frame = pd.concat([offline.frame, batch_features(store, plan, history)], axis=1)
    event_time = pd.to_datetime(history[plan.schema.timestamp_field], utc=True)
    cutoff = event_time.max()
    id_field = plan.schema.event_id
    label_time = None
    if "label_time" in labels:
        labels = labels[pd.to_datetime(labels["label_time"], utc=True) <= cutoff]
        label_time = pd.to_datetime(history[id_field].map(labels.set_index(id_field)["label_time"]), utc=True)
    label = history[id_field].map(labels.set_index(id_field)[label_column])
    mature, maturity = mature_rows(event_time, label, label_time, cutoff)
    usable = offline.scored & label.notna().to_numpy() & mature
    x = frame.loc[usable, list(plan.vector)]
    return TrainingFrame(
        x, label[usable].astype(int).to_numpy(), event_time[usable], plan, cutoff, maturity, categorical_features(store, plan),
        order=order_of(history),
    )


def train(
    repo_path: str | Path,
    registry: str | Path | ModelStore,
    *,
    service: str | None = None,
    labels_path: str | Path | None = None,
    label_column: str | None = None,
    num_trees: int = 200,
    seed: int = 7,
    rule: ThresholdRule = ThresholdRule(),
    parent: str | None = None,
    trigger: str = "manual",
    alias: str | None = CHAMPION,
    frame: TrainingFrame | None = None,
    label_definition: str | None = None,
    before_publish=None,
    archive: str | Path | None = None,
) -> TrainResult:
    """Train on the repo's history and publish to `registry` (a model directory or `mlflow:<uri>`).

    `alias` is what the new version becomes: champion (as `sluice train`
    always did; the previous champion stays recoverable by rollback),
    challenger (or any alias), or None. `parent` defaults to the champion at training time.
    `before_publish(booster) -> dict` adds to the metadata before the version is stored (the
    autopilot's gate and data window: versions are immutable once published).
    """
    import lightgbm as lgb

    started = time.perf_counter()
    repo_path = Path(repo_path)
    # `frame`: rows given by the caller (stream.lifecycle.labeled_train: the vectors that were served).
    tf = frame or training_frame(
        repo_path, service, Path(labels_path) if labels_path else None, label_column, Path(archive) if archive else None
    )
    x, y = tf.x.to_numpy(), tf.y
    if len(x) < 100 or y.sum() < 5:
        msg = (
            f"only {len(x)} labelled rows ({int(y.sum())} positive) have final labels at the cut-off "
            f"(label maturity {tf.label_maturity}); generate more history"
        )
        raise SluiceError(msg)
    # Validate on the most recent fifth: the model is used on the future.
    order = np.argsort(tf.event_time.to_numpy(), kind="stable")
    split = int(len(order) * 0.8)
    train_idx, valid_idx = order[:split], order[split:]
    params = dict(PARAMS, seed=seed)
    names = list(tf.plan.vector)
    weight = None if tf.weight is None else tf.weight[train_idx]
    data = lgb.Dataset(x[train_idx], label=y[train_idx], weight=weight, feature_name=names, free_raw_data=False)
    booster = lgb.train(params, data, num_boost_round=num_trees)
    valid_x, valid_y = x[valid_idx], y[valid_idx]
    scores = booster.predict(valid_x, num_threads=params["num_threads"])
    threshold = rule.threshold(valid_y, scores)
    metrics = _json_safe(binary_metrics(valid_y, scores, threshold))
    sample = np.sort(np.random.default_rng(seed).permutation(len(valid_x))[:CONTRIBUTION_ROWS])
    contributions = booster.predict(valid_x[sample], pred_contrib=True, num_threads=params["num_threads"])
    store = open_model_store(registry, name=tf.plan.service)
    now = datetime.now(tz=UTC).isoformat()
    meta = {
        "feature_service": tf.plan.service,
        "features": names,
        "training_window": {
            "start": tf.event_time.min().isoformat(),
            "end": tf.event_time.max().isoformat(),
            "cutoff": tf.cutoff.isoformat(),
            "validation_start": tf.event_time.iloc[valid_idx].min().isoformat(),
            "label_maturity_s": tf.label_maturity.total_seconds(),
        },
        "label_definition": label_definition or (
            f"{label_column or tf.plan.tags.get('sluice.label_column', 'label')} from the labels file, only where "
            "label_time <= cutoff, and only for events at least the label maturity (the longest delay of a known "
            "negative label) before the cutoff, so that both classes had time to arrive"
        ),
        "feature_order": tf.order if archive is None else f"{tf.order} {archive}",
        "rows": {"train": int(len(train_idx)), "validation": int(len(valid_idx)), "positives": int(y.sum()),
                 "validation_positives": int(valid_y.sum()),
                 **({} if weight is None else {"train_weight": float(weight.sum())})},
        "validation_auc": metrics["auc"],
        "metrics": metrics,
        "threshold": threshold,
        "threshold_rule": {"kind": rule.kind, "target": rule.target, "achieved": _achieved(metrics, valid_y, scores, threshold)},
        "params": dict(params, num_trees=num_trees),
        "seed": seed,
        "parent": parent if parent is not None else store.aliases().get(CHAMPION),
        "trigger": trigger,
        "created_at": now,
        "trained_at": now,
        "reference": reference(valid_x, names, scores, contributions, categorical=tf.categorical),
    }
    if before_publish is not None:
        meta.update(before_publish(booster))
    version = store.publish(booster, meta)
    if alias:
        store.set_alias(alias, version, kind="promote" if alias == CHAMPION else "set", reason=f"sluice train ({trigger})")
    auc = float("nan") if metrics["auc"] is None else metrics["auc"]
    return TrainResult(
        version, store.folder(version), len(x), int(y.sum()), auc, threshold, time.perf_counter() - started, store.meta(version)
    )


def _achieved(metrics: dict, labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    alerts = int((scores >= threshold).sum())
    return {"alert_rate": metrics["alert_rate"], "precision": metrics["precision"], "recall": metrics["recall"],
            "alerts": alerts, "rows": int(len(scores)), "positives": int(np.sum(labels))}


def _json_safe(values: dict) -> dict:
    """NaN (no positives, no alerts) as null: JSON has no NaN."""
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in values.items()}
