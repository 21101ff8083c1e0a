"""Read a Feast feature repository into a `FeaturePlan` (the only Feast import in features/)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from features.errors import SluiceError, UnsupportedFeatureError
from features.spec import BatchView, EventSchema, FeaturePlan, StreamView, make_agg

#: Spark DDL types in a KafkaSource JsonFormat schema -> the kinds validation knows.
DDL_KINDS = {
    "string": "string",
    "varchar": "string",
    "double": "double",
    "float": "double",
    "decimal": "double",
    "long": "long",
    "bigint": "long",
    "int": "long",
    "integer": "long",
    "smallint": "long",
    "boolean": "bool",
    "bool": "bool",
    "timestamp": "timestamp",
}


def open_store(repo_path: str | os.PathLike):
    """A FeatureStore for the repo, with Feast's alpha warnings kept out of the logs."""
    os.environ.setdefault("FEAST_USAGE", "False")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from feast import FeatureStore

        return FeatureStore(repo_path=str(Path(repo_path)))


def parse_ddl(schema_json: str, source: str) -> tuple[tuple[str, str], ...]:
    fields = []
    for part in filter(None, (p.strip() for p in schema_json.split(","))):
        try:
            name, ddl = part.split()
        except ValueError:
            msg = f"stream source {source}: cannot read schema entry {part!r}; write 'name type', e.g. 'amount double'"
            raise SluiceError(msg) from None
        kind = DDL_KINDS.get(ddl.lower())
        if kind is None:
            msg = f"stream source {source}: field {name} has type {ddl!r}; use one of {sorted(DDL_KINDS)}"
            raise SluiceError(msg)
        fields.append((name, kind))
    return tuple(fields)


def _ms(delta) -> int:
    return int(round(delta.total_seconds() * 1000)) if delta is not None else 0


def load_plan(store, service: str | None = None) -> FeaturePlan:
    """Compile the FeatureService `service` (the only one, when None) of an applied repo."""
    services = store.list_feature_services()
    if service is None:
        if len(services) != 1:
            names = sorted(s.name for s in services)
            msg = f"the feature repo has {len(services)} feature services {names}; pass --feature-service"
            raise SluiceError(msg)
        fs = services[0]
    else:
        fs = store.get_feature_service(service)
    stream_names = {v.name for v in store.list_stream_feature_views()}
    stream_views, batch_views, vector = [], [], []
    schema = None
    for proj in fs.feature_view_projections:
        names = tuple(f.name for f in proj.features)
        vector.extend(f"{proj.name_to_use()}__{n}" for n in names)
        if proj.name in stream_names:
            view = store.get_stream_feature_view(proj.name)
            source = view.stream_source
            opts = source.kafka_options
            view_schema = EventSchema(
                fields=parse_ddl(opts.message_format.schema_json, source.name),
                event_id=fs.tags.get("sluice.event_id", "event_id"),
                timestamp_field=source.timestamp_field,
                topic=opts.topic,
                allowed_lateness_ms=_ms(opts.watermark_delay_threshold),
            )
            if schema is not None and view_schema != schema:
                msg = (
                    f"stream feature view {view.name} reads {source.name}, but {fs.name} already uses another "
                    "stream source; a feature service must read one event stream"
                )
                raise UnsupportedFeatureError(msg)
            schema = view_schema
            wanted = set(names)
            aggs = tuple(
                make_agg(view.name, a.resolved_name(a.time_window), a.function, a.column, _ms(a.time_window), _ms(a.slide_interval))
                for a in view.aggregations
                if a.resolved_name(a.time_window) in wanted
            )
            missing = wanted - {a.name for a in aggs}
            if missing:
                msg = f"feature {view.name}:{sorted(missing)[0]} is not an aggregation of the view; declare it as Aggregation(name=...)"
                raise UnsupportedFeatureError(msg)
            for agg in aggs:
                if agg.function == "count_distinct" and agg.hopping:
                    msg = f"feature {view.name}:{agg.name}: count_distinct needs an exact window; remove slide_interval"
                    raise UnsupportedFeatureError(msg)
            keys = tuple(c.name for c in view.entity_columns)
            stream_views.append(StreamView(name=view.name, join_keys=keys, aggs=aggs))
        else:
            view = store.get_feature_view(proj.name)
            keys = tuple(c.name for c in view.entity_columns)
            batch_views.append(BatchView(name=view.name, join_keys=keys, features=names))
    if schema is None:
        msg = f"feature service {fs.name} uses no stream feature view; Sluice needs at least one"
        raise UnsupportedFeatureError(msg)
    field_names = {n for n, _ in schema.fields}
    for view in stream_views:
        for col in (*view.join_keys, *view.columns):
            if col not in field_names:
                msg = f"stream feature view {view.name} uses field {col!r}, which the source schema does not declare"
                raise UnsupportedFeatureError(msg)
    partition_key = fs.tags.get("sluice.partition_key", stream_views[0].join_keys[0])
    return FeaturePlan(
        service=fs.name,
        schema=schema,
        stream_views=tuple(stream_views),
        batch_views=tuple(batch_views),
        vector=tuple(vector),
        partition_key=partition_key,
        tags=dict(fs.tags),
    )
