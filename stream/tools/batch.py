"""Out-of-core batch work: a history far larger than memory, cut by entity, one shard at a time, or on Ray.

Three passes, each bounded by the size of one shard, not of the history:

1. **Prepare** (`stream.tools.batch_prepare`; DuckDB, spilling to the work directory): number the events
   (`_row`, file order), take event time in ms, judge lateness per events
   partition against its stream time in arrival order (a window function:
   the running max of event time before the event, exactly
   `features.offline.late_mask`), then write each stage's events partitioned
   by a hash of that stage's entity key, and every event partitioned by its
   partition key (the scoring shards).
2. **Features**: each (stage, shard) runs `features.sharded.shard_features`
   and writes its values split by scoring shard.
3. **Score**: each scoring shard joins its events with its feature values by
   `_row` and answers them with `stream.lifecycle.batch.score_frame`, in
   chunks, into the output parquet dataset.

Passes 2 and 3 are tasks: a loop in this process, or Ray tasks (`ray` =
"local" or a cluster address). Every shard holds every event of its
entities, so the output does not depend on where or in how many shards it
ran: the same bytes in one process and on Ray.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import SluiceError
from features.sharded import ROW, TS, shard_features, stage_names
from features.spec import FeaturePlan
from stream.lifecycle.batch import LATE, SERVING_COLUMNS, score_frame
from stream.tools.batch_job import SHARD0, BatchJob, BatchReport, ServingSpec
from stream.tools.batch_prepare import count_rows, prepare

__all__ = ["BatchJob", "BatchReport", "Runner", "ServingSpec", "count_rows", "offline_features", "read_output", "run", "shard_count"]


def _read(folder: Path) -> pd.DataFrame | None:
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return None
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if len(files) > 1 else pd.read_parquet(files[0])


def feature_task(job: BatchJob, stage: int, shard: int) -> int:
    """Pass 2 for one (stage, shard): its features, written split by scoring shard."""
    work = Path(job.work)
    events = _read(work / f"stage{stage}" / f"_shard={shard}")
    if events is None:
        return 0
    events = events.sort_values(ROW, kind="stable", ignore_index=True)
    values = shard_features(job.plan, stage, events)
    values[SHARD0] = events[SHARD0].to_numpy()
    for target, part in values.groupby(SHARD0, sort=True):
        folder = work / f"feat{stage}" / f"part={int(target)}"
        folder.mkdir(parents=True, exist_ok=True)
        part.drop(columns=SHARD0).to_parquet(folder / f"from-{shard:05d}.parquet", index=False)
    return len(events)


def joined_shard(job: BatchJob, shard: int) -> pd.DataFrame | None:
    """One scoring shard's events with every stage's features, joined by `_row`, in history order.

    Late events have no features (NaN), as in `compute_features`. Each
    feature column is placed by `_row` into one array (no merged copies of
    the events frame: a merge per stage held three of them at once).
    """
    work = Path(job.work)
    base = _read(work / "events" / f"{SHARD0}={shard}")
    if base is None:
        return None
    base = base.sort_values(ROW, kind="stable", ignore_index=True)
    rows = base[ROW].to_numpy(dtype=np.int64)
    columns: dict[str, np.ndarray] = {}
    for stage in range(len(job.plan.stages())):
        values = _read(work / f"feat{stage}" / f"part={shard}")
        names = [c for c in values.columns if c != ROW] if values is not None else stage_names(job.plan, stage)
        at = np.searchsorted(rows, values[ROW].to_numpy(dtype=np.int64)) if values is not None else None
        for name in names:
            column = np.full(len(base), np.nan)
            if values is not None:
                column[at] = values[name].to_numpy(dtype=np.float64)
            columns[name] = column
        del values
    return pd.concat([base, pd.DataFrame(columns)], axis=1)


_SERVING_CACHE: dict = {}


def _serving_and_batch(job: BatchJob):
    """The task's `Serving` and batch-feature lookup, built once per process."""
    spec = job.serving
    # By content: a Ray task gets its own copy of the job, and must not load the models again for each shard.
    key = (spec.deployment.to_json(), tuple(sorted(spec.folders.items())), job.repo_path)
    if key not in _SERVING_CACHE:
        from features.feast_repo import open_store
        from stream.feast.online_read import BatchFeatureCache
        from stream.pipeline.vectors import BatchFeatures
        from stream.serving.model import load_model
        from stream.serving.scorer import Serving

        dep = spec.deployment
        models = {v: load_model(spec.folders[v], expected_features=job.plan.vector) for v in (*dep.versions, *dep.fallback_versions)}
        serving = Serving(dep, models, reason_share=spec.reason_share, reason_k=spec.reason_k, reason_method=spec.reason_method)
        batch = None
        if job.plan.batch_views:
            cache = BatchFeatureCache(open_store(job.repo_path), job.plan.batch_views, ttl_s=float("inf"))
            batch = StrictBatch(BatchFeatures(cache, slow_ms=float("inf")))
        _SERVING_CACHE.clear()
        _SERVING_CACHE[key] = (serving, batch)
    return _SERVING_CACHE[key]


class StrictBatch:
    """The worker's batch-feature lookup, except that a store failure stops the run instead of a fallback."""

    def __init__(self, inner):
        self.inner = inner

    def lookup(self, plan, records, rows):
        blocks, problem = self.inner.lookup(plan, records, rows)
        if problem is not None:
            msg = f"the online store failed during batch scoring ({problem}); the run stops rather than score without it"
            raise SluiceError(msg)
        return blocks, None


def score_task(job: BatchJob, shard: int, output: str) -> tuple[int, int]:
    """Pass 3 for one scoring shard: (events, predictions) written to `output` in chunks."""
    frame = joined_shard(job, shard)
    if frame is None:
        return 0, 0
    serving, batch = _serving_and_batch(job)
    predictions = 0
    for chunk, start in enumerate(range(0, len(frame), job.chunk_rows)):
        part = score_frame(job.plan, serving, batch, frame.iloc[start : start + job.chunk_rows].reset_index(drop=True))
        predictions += int((part["outcome"] == "prediction").sum())
        _write(part, output_schema(job.plan), Path(output) / f"part-{shard:05d}-{chunk:05d}.parquet")
    return len(frame), predictions


def output_schema(plan: FeaturePlan):
    """The batch-score dataset's columns and types, the same in every part (a part of late events only included)."""
    import pyarrow as pa

    text = {plan.schema.event_id, "entity", "model_version", "route", "event_time", "fallback", "rule", "reasons", "outcome"}
    numbers = {"score", "threshold", *plan.vector}
    columns = [plan.schema.event_id, *SERVING_COLUMNS, *plan.vector]
    kinds = {c: pa.string() if c in text else pa.float64() if c in numbers else pa.bool_() for c in columns}
    return pa.schema([(c, kinds[c]) for c in columns])


def _write(frame: pd.DataFrame, schema, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False), path)


def backfill_task(job: BatchJob, shard: int, output: str) -> int:
    """Pass 3 of a backfill: one shard's feature rows (`_row` and the stream features) to `output`."""
    frame = joined_shard(job, shard)
    if frame is None:
        return 0
    frame = frame.drop(columns=[TS, SHARD0], errors="ignore").rename(columns={LATE: "late_stage"})
    frame.to_parquet(Path(output) / f"part-{shard:05d}.parquet", index=False)
    return len(frame)


class Runner:
    """Runs tasks here, one after the other, or as Ray tasks (`ray`: "local", or a cluster address)."""

    def __init__(self, ray: str | None = None, num_cpus: int | None = None):
        self.ray = ray
        self.cpu_s = 0.0
        self._remote = {}
        if ray is not None:
            import os

            import ray as ray_mod

            if not ray_mod.is_initialized():
                here = str(Path(__file__).resolve().parents[2])
                env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}}
                if ray == "local":
                    ray_mod.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=False)
                else:
                    ray_mod.init(address=ray, runtime_env=env, log_to_driver=False)
            self._ray = ray_mod

    def map(self, fn, calls: list[tuple]) -> list:
        """`fn(*args)` for each call, results in order; adds the tasks' CPU seconds to `cpu_s`."""
        if self.ray is None:
            done = [_timed(fn, *args) for args in calls]
        else:
            if "timed" not in self._remote:
                self._remote["timed"] = self._ray.remote(_timed)
            done = self._ray.get([self._remote["timed"].remote(fn, *args) for args in calls])
        self.cpu_s += sum(cpu for _, cpu in done)
        return [result for result, _ in done]


def _timed(fn, *args):
    """(fn(*args), CPU seconds it took in this process): what a task cost, whatever else shares the machine."""
    started = time.process_time()
    result = fn(*args)
    return result, time.process_time() - started


def run(job: BatchJob, history: str | Path, output: str | Path, runner: Runner | None = None) -> BatchReport:
    """Batch-score (or, with `job.serving` None, backfill) `history` into the parquet dataset `output`."""
    runner = runner or Runner()
    output = Path(output)
    if output.exists() and not output.is_dir():
        msg = f"--output {output} is a file; batch output is a directory of parquet files"
        raise SluiceError(msg)
    output.mkdir(parents=True, exist_ok=True)
    for old in output.glob("part-*.parquet"):  # an earlier run's parts: only those are replaced
        old.unlink()
    started = time.perf_counter()
    try:
        report = prepare(job, history)
        report.seconds["prepare"] = time.perf_counter() - started
        mark = time.perf_counter()
        runner.map(feature_task, [(job, s, k) for s in range(len(job.plan.stages())) for k in range(job.shards)])
        report.seconds["features"] = time.perf_counter() - mark
        mark = time.perf_counter()
        if job.serving is None:
            runner.map(backfill_task, [(job, k, str(output)) for k in range(job.shards)])
        else:
            done = runner.map(score_task, [(job, k, str(output)) for k in range(job.shards)])
            report.predictions = sum(p for _, p in done)
        report.seconds["score" if job.serving is not None else "join"] = time.perf_counter() - mark
    finally:
        shutil.rmtree(job.work, ignore_errors=True)
    report.seconds["total"] = time.perf_counter() - started
    report.seconds["task_cpu"] = runner.cpu_s
    return report


def read_output(output: str | Path) -> pd.DataFrame:
    """A batch-score or backfill dataset, whole (for tests and small runs)."""
    files = sorted(Path(output).glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def shard_count(events: int, shard_rows: int) -> int:
    """Shards for a history of `events` so that one holds about `shard_rows` events."""
    return max(1, int(np.ceil(events / max(shard_rows, 1))))


def offline_features(job: BatchJob, history: str | Path, index: pd.Index, runner: Runner | None = None):
    """`compute_features`' result for the history at `history`, computed a shard at a time (bit-identical).

    For the training-set builder: the kernel's working memory is one
    shard's; the result itself (one row per event) is what training holds anyway.
    """
    from features.offline import OfflineFeatures

    output = Path(job.work).with_name(Path(job.work).name + "-out")
    try:
        run(job, history, output, runner)
        frame = read_output(output).sort_values(ROW).reset_index(drop=True)
    finally:
        shutil.rmtree(output, ignore_errors=True)
    names = [f"{v.name}__{a.name}" for v in job.plan.stream_views for a in v.aggs]
    values = frame[names].set_axis(index)
    return OfflineFeatures(late_stage=frame["late_stage"].to_numpy(dtype=np.int64), frame=values)
