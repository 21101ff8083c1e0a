"""`feast materialize`, restricted to the views Feast can materialize in a Sluice repo.

Feast's local compute engine cannot compute windowed aggregations, so a
plain `feast materialize START END` on a repo with aggregating stream feature
views fails on the first of them ("Time window aggregation is not supported
in the local compute engine"). Those views are computed by the Sluice worker
and pushed to the online store as events arrive; what needs materializing is
everything else: the online batch feature views (and any stream view without
aggregations, materialized from its batch source like a batch view).

`materialize` and `materialize_incremental` hand exactly those views to
`FeatureStore.materialize` / `FeatureStore.materialize_incremental`, one view
per call, and report what the registry recorded for each: the time range
materialized and how long it took. Feast's own progress output (coloured
headers, progress bars) is kept out of the caller's streams.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from features.errors import SluiceError
from features.feast_repo import open_store


@dataclass(frozen=True)
class Materialized:
    """One view written to the online store: the interval Feast recorded for it."""

    view: str
    start: datetime
    end: datetime
    seconds: float
    #: Incremental only: the view was already materialized up to `end` or later; nothing was done.
    up_to_date: bool = False

    def line(self) -> str:
        if self.up_to_date:
            return f"{self.view}: already materialized to {self.start:%Y-%m-%d %H:%M:%S} UTC, nothing to do"
        return f"{self.view}: {self.start:%Y-%m-%d %H:%M:%S} to {self.end:%Y-%m-%d %H:%M:%S} UTC ({self.seconds:.1f} s)"


@dataclass(frozen=True)
class Views:
    """The repo's online views, split into what materialization can and cannot write."""

    batch: tuple[str, ...]
    #: Stream views with aggregations: the worker's, never materialized.
    windowed: tuple[str, ...]
    #: The names in `batch` that are stream views (without aggregations).
    streamed: frozenset[str] = frozenset()


def online_views(store) -> Views:
    batch, windowed, streamed = [], [], set()
    for view in store.list_feature_views():
        if view.online and getattr(view, "enabled", True):
            batch.append(view.name)
    for view in store.list_stream_feature_views():
        if not (view.online and getattr(view, "enabled", True)):
            continue
        if view.aggregations:
            windowed.append(view.name)
        else:
            batch.append(view.name)
            streamed.add(view.name)
    return Views(tuple(sorted(batch)), tuple(sorted(windowed)), frozenset(streamed))


def _view(store, views: Views, name: str):
    """The view as the registry holds it now (not a cached copy)."""
    if name in views.streamed:
        return store.get_stream_feature_view(name)
    return store.get_feature_view(name)


def _chosen(store, views: Views, names: list[str] | None) -> list[str]:
    if not names:
        return list(views.batch)
    repo = store.repo_path
    for name in names:
        if name in views.windowed:
            msg = (
                f"{name} is a stream feature view with windowed aggregations: the Sluice worker computes it and "
                "writes it to the online store, and Feast's local engine cannot materialize it; "
                f"materialize only batch views ({', '.join(views.batch) or 'the repo has none'})"
            )
            raise SluiceError(msg)
        if name not in views.batch:
            msg = f"feature repo {repo} has no online batch feature view {name!r}; choose from {', '.join(views.batch) or 'none'}"
            raise SluiceError(msg)
    return list(dict.fromkeys(names))


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@contextlib.contextmanager
def _feast_output_kept():
    """Hold what Feast prints; let it through only if the call fails."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    except BaseException:
        sys.stderr.write(out.getvalue() + err.getvalue())
        raise


def _recorded(store, views: Views, name: str, started: float) -> Materialized:
    start, end = _view(store, views, name).materialization_intervals[-1]
    return Materialized(name, _utc(start), _utc(end), time.perf_counter() - started)


def materialize(
    repo_path: str | Path, start: datetime, end: datetime, views: list[str] | None = None, *, store=None
) -> Iterator[Materialized]:
    """Materialize the batch views (or the named ones) over [start, end]; one result per view as it finishes."""
    start, end = _utc(start), _utc(end)
    if start > end:
        msg = f"start {start.isoformat()} is after end {end.isoformat()}; give START before END"
        raise SluiceError(msg)
    store = store or open_store(repo_path)
    online = online_views(store)
    for name in _chosen(store, online, views):
        started = time.perf_counter()
        with _feast_output_kept():
            store.materialize(start_date=start, end_date=end, feature_views=[name])
        yield _recorded(store, online, name, started)


def materialize_incremental(
    repo_path: str | Path, end: datetime, views: list[str] | None = None, *, store=None
) -> Iterator[Materialized]:
    """`feast materialize-incremental END` for the batch views: each from where it was last materialized to."""
    end = _utc(end)
    store = store or open_store(repo_path)
    online = online_views(store)
    for name in _chosen(store, online, views):
        previous = _view(store, online, name).most_recent_end_time
        if previous is not None and _utc(previous) >= end:
            # Feast would record an interval that ends before it starts.
            yield Materialized(name, _utc(previous), end, 0.0, up_to_date=True)
            continue
        started = time.perf_counter()
        with _feast_output_kept():
            store.materialize_incremental(end_date=end, feature_views=[name])
        yield _recorded(store, online, name, started)
