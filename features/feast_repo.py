"""Read a Feast feature repository into a `FeaturePlan` (the only Feast import in features/)."""

from __future__ import annotations

import os
import warnings
from datetime import UTC, datetime
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


class RepoError(SluiceError):
    """A feature repository Sluice cannot read as it is."""


class StaleRepoError(RepoError):
    """The repo's definition files changed after `feast apply` last wrote its registry."""


def open_store(repo_path: str | os.PathLike, *, check_applied: bool = True):
    """A FeatureStore for the repo, with Feast's alpha warnings kept out of the logs.

    Before Feast is handed the repo, Sluice checks what Feast would otherwise
    report with a traceback, or not at all: the directory and its
    feature_store.yaml exist and hold a valid configuration; every definition
    file compiles; the registry exists (Feast would silently create an empty
    one); and no definition file changed after the registry was last written.

    That last rule: the worker serves what the *registry* says, and only
    `feast apply` writes the registry from the files, stamping it with its
    `last_updated` time (every apply does, even one that changes nothing).
    A definition file (the `*.py` files `feast apply` reads, honouring
    `.feastignore`, and feature_store.yaml) whose modification time is later
    than that stamp may declare something the registry does not have, so the
    repo is refused until `feast apply` is run. A file that was only touched
    (a fresh checkout, a copy that does not keep times) is refused as well:
    Feast keeps no fingerprint of the files it applied, and `feast plan`
    reports differences even for an unchanged repo, so modification time is
    the one signal that never lets a changed file through; the fix, an
    idempotent `feast apply`, costs a few seconds. Registries that are not
    local files (sql, s3://, gs://) are not checked for staleness.
    `check_applied=False` skips the registry checks (for tools that apply).
    """
    os.environ.setdefault("FEAST_USAGE", "False")
    repo = Path(repo_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = _read_config(repo)
        _check_definitions_compile(repo)
        if check_applied:
            _check_applied(repo, config)
        from feast import FeatureStore

        return FeatureStore(repo_path=str(repo))


def _read_config(repo: Path):
    from feast.repo_config import load_repo_config
    from feast.utils import get_default_yaml_file_path

    if not repo.is_dir():
        msg = f"feature repo {repo} does not exist; pass --repo (or SLUICE_REPO) naming a Feast repository directory"
        raise RepoError(msg)
    yaml_file = get_default_yaml_file_path(repo)
    if not yaml_file.is_file():
        msg = f"feature repo {repo} has no {yaml_file.name}; point --repo at a Feast repository (or create one with `feast init`)"
        raise RepoError(msg)
    import yaml

    try:
        config = load_repo_config(repo, yaml_file)
        # Store configurations are validated when first read.
        config.registry, config.online_store, config.offline_store  # noqa: B018
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        msg = f"feature repo {repo}: {yaml_file.name} is not valid YAML{where} ({getattr(exc, 'problem', None) or exc}); fix the file"
        raise RepoError(msg) from None
    except TypeError:
        msg = f"feature repo {repo}: {yaml_file.name} is empty or not a mapping of settings; fix the file"
        raise RepoError(msg) from None
    except Exception as exc:  # noqa: BLE001 - pydantic, Feast and import errors all mean "a config Feast rejects"
        msg = f"feature repo {repo}: {yaml_file.name} is not a configuration Feast accepts ({_summary(exc)}); fix the file"
        raise RepoError(msg) from None
    return config


def _summary(exc: Exception, limit: int = 200) -> str:
    text = " ".join(line.strip() for line in str(getattr(exc, "_error_message", exc)).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def definition_files(repo: Path) -> list[Path]:
    """The files `feast apply` reads: its Python files (as Feast lists them) and feature_store.yaml."""
    from feast.repo_operations import get_repo_files
    from feast.utils import get_default_yaml_file_path

    return [*get_repo_files(repo.resolve()), get_default_yaml_file_path(repo).resolve()]


def _check_definitions_compile(repo: Path) -> None:
    root = repo.resolve()
    for path in definition_files(repo):
        if path.suffix != ".py":
            continue
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            name = path.relative_to(root) if path.is_relative_to(root) else path
            msg = (
                f"feature repo {repo}: {name} line {exc.lineno} has a syntax error ({exc.msg}); "
                f"fix it, then run `cd {repo} && feast apply`"
            )
            raise RepoError(msg) from None


def _local_registry(repo: Path, config) -> Path | None:
    registry = config.registry
    if getattr(registry, "registry_type", "file") != "file" or "://" in registry.path:
        return None
    path = Path(registry.path)
    return path if path.is_absolute() else repo / path


def registry_updated_at(path: Path) -> datetime:
    """When `feast apply` (or another registry write) last updated this file registry."""
    from feast.protos.feast.core.Registry_pb2 import Registry

    proto = Registry()
    proto.ParseFromString(path.read_bytes())
    return proto.last_updated.ToDatetime(tzinfo=UTC)


def _check_applied(repo: Path, config) -> None:
    registry = _local_registry(repo, config)
    if registry is None:
        return
    if not registry.exists():
        msg = f"feature repo {repo} has never been applied (no registry at {registry}); run `cd {repo} && feast apply`"
        raise RepoError(msg)
    try:
        updated = registry_updated_at(registry)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and OSError alike
        msg = f"feature repo {repo}: the registry {registry} cannot be read ({_summary(exc)}); remove it and run `cd {repo} && feast apply`"
        raise RepoError(msg) from None
    if updated.timestamp() <= 0:
        return  # no time recorded: nothing to compare with
    root = repo.resolve()
    changed = [p for p in definition_files(repo) if p.exists() and p.stat().st_mtime > updated.timestamp()]
    if changed:
        names = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in changed]
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        msg = (
            f"feature repo {repo}: {listed} changed after `feast apply` last wrote the registry "
            f"({updated:%Y-%m-%d %H:%M:%S} UTC); run `cd {repo} && feast apply` so that what is served is what the files declare"
        )
        raise StaleRepoError(msg)


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
    with warnings.catch_warnings():
        # Feast warns that stream feature views are alpha each time it reads one from the registry.
        warnings.filterwarnings("ignore", message="Stream feature views are experimental")
        return _load_plan(store, service)


def _load_plan(store, service: str | None) -> FeaturePlan:
    fs = _feature_service(store, service)
    stream_names = {v.name for v in store.list_stream_feature_views()}
    stream_views, batch_views, vector = [], [], []
    schema = None
    for proj in fs.feature_view_projections:
        names = tuple(f.name for f in proj.features)
        vector.extend(f"{proj.name_to_use()}__{n}" for n in names)
        if proj.name in stream_names:
            view, view_schema = _stream_view(store, fs, proj, names)
            if schema is not None and view_schema != schema:
                msg = (
                    f"stream feature view {view.name} reads another stream source than the rest of {fs.name}; "
                    "a feature service must read one event stream"
                )
                raise UnsupportedFeatureError(msg)
            schema = view_schema
            stream_views.append(view)
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


def _stream_view(store, fs, proj, names: tuple[str, ...]) -> tuple[StreamView, EventSchema]:
    """One stream view of a FeatureService, with the event schema of the stream it reads."""
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
    return StreamView(name=view.name, join_keys=keys, aggs=aggs), view_schema


def _feature_service(store, service: str | None):
    services = store.list_feature_services()
    names = sorted(s.name for s in services)
    repo = store.repo_path
    if not services:
        msg = f"feature repo {repo} declares no FeatureService (or it is not applied); declare one, then run `cd {repo} && feast apply`"
        raise RepoError(msg)
    if service is None:
        if len(services) != 1:
            msg = f"feature repo {repo} has {len(services)} feature services {names}; pass --feature-service with one of them"
            raise RepoError(msg)
        return services[0]
    matching = [s for s in services if s.name == service]
    if not matching:
        msg = f"feature repo {repo} has no feature service {service!r}; pass --feature-service with one of {names}"
        raise RepoError(msg)
    return matching[0]
