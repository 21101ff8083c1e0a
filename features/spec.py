"""A compiled, Feast-free description of the features a model uses.

`features.feast_repo` builds a `FeaturePlan` from a Feast registry; everything
that computes features (online and offline) reads only these frozen objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from features.errors import UnsupportedFeatureError

#: Feast spells some functions several ways; each maps to one canonical name.
FUNCTION_ALIASES = {
    "sum": "sum",
    "count": "count",
    "mean": "mean",
    "avg": "mean",
    "min": "min",
    "max": "max",
    "std": "std",
    "stddev": "std",
    "var": "var",
    "variance": "var",
    "count_distinct": "count_distinct",
}

#: Longest window Sluice accepts; longer windows need a batch feature view.
MAX_WINDOW_MS = 30 * 24 * 3600 * 1000


@dataclass(frozen=True)
class WindowAgg:
    """One aggregated output: `function(column)` over a time window.

    `slide_ms` equal to `window_ms` means an exact sliding window (Feast fills
    slide_interval with time_window when it is not declared); a smaller slide
    means a hopping window that advances in steps of `slide_ms`.
    """

    name: str
    function: str
    column: str
    window_ms: int
    slide_ms: int

    @property
    def hopping(self) -> bool:
        return self.slide_ms < self.window_ms

    @property
    def layout(self) -> int:
        """Storage layout key: 0 for raw events, else the tile length in ms."""
        return self.slide_ms if self.hopping else 0


def make_agg(view: str, name: str, function: str, column: str, window_ms: int, slide_ms: int | None) -> WindowAgg:
    """Validate one declaration; raise with a message naming the feature and the fix."""
    where = f"feature {view}:{name}"
    canonical = FUNCTION_ALIASES.get(function.lower())
    if canonical is None:
        msg = (
            f"{where}: aggregation function {function!r} is not supported; "
            f"use one of {sorted(set(FUNCTION_ALIASES))}"
        )
        raise UnsupportedFeatureError(msg)
    if window_ms <= 0:
        msg = f"{where}: time_window is missing or not positive; declare time_window=timedelta(...)"
        raise UnsupportedFeatureError(msg)
    if window_ms > MAX_WINDOW_MS:
        msg = f"{where}: time_window {window_ms / 86_400_000:g} days exceeds 30 days; use a batch FeatureView"
        raise UnsupportedFeatureError(msg)
    slide = slide_ms or window_ms
    if slide <= 0 or slide > window_ms or window_ms % slide:
        msg = (
            f"{where}: slide_interval must divide time_window evenly "
            f"(got window {window_ms} ms, slide {slide} ms); pick a slide such as window/24"
        )
        raise UnsupportedFeatureError(msg)
    return WindowAgg(name=name, function=canonical, column=column, window_ms=window_ms, slide_ms=slide)


@dataclass(frozen=True)
class StreamView:
    """Windowed aggregates per entity, from one stream source."""

    name: str
    join_keys: tuple[str, ...]
    aggs: tuple[WindowAgg, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.column for a in self.aggs))

    @property
    def layouts(self) -> tuple[int, ...]:
        return tuple(sorted({a.layout for a in self.aggs}))

    def retention_ms(self, layout: int) -> int:
        return max(a.window_ms for a in self.aggs if a.layout == layout)


@dataclass(frozen=True)
class BatchView:
    """Features looked up in the Feast online store by entity key."""

    name: str
    join_keys: tuple[str, ...]
    features: tuple[str, ...]


@dataclass(frozen=True)
class EventSchema:
    """What a valid event looks like: typed fields, its id, its time and lateness."""

    fields: tuple[tuple[str, str], ...]  # (name, kind) with kind in string/double/long/bool/timestamp
    event_id: str
    timestamp_field: str
    topic: str
    allowed_lateness_ms: int


@dataclass(frozen=True)
class FeaturePlan:
    """Everything the worker and the offline path need to compute one model's vector."""

    service: str
    schema: EventSchema
    stream_views: tuple[StreamView, ...]
    batch_views: tuple[BatchView, ...]
    vector: tuple[str, ...]  # qualified names "view__feature", in FeatureService order
    partition_key: str  # field the events topic is keyed (partitioned) by
    tags: dict[str, str] = field(default_factory=dict)

    def stages(self) -> tuple[tuple[str, ...], ...]:
        """Partition-key groups, in processing order.

        The events topic is keyed by `partition_key`. Views whose keys
        include it are computed where the event arrives; every other key set
        gets its own repartition stage, so each entity's state lives in
        exactly one partition.
        """
        first = self.partition_key
        keys: list[tuple[str, ...]] = [(first,)]
        for view in self.stream_views:
            if first not in view.join_keys and view.join_keys not in keys:
                keys.append(view.join_keys)
        return tuple(keys)

    def stage_of(self, view: StreamView) -> int:
        if self.partition_key in view.join_keys:
            return 0
        return self.stages().index(view.join_keys)
