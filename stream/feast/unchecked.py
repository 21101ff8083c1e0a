"""Import Feast without typeguard's instrumentation, for processes that only read an applied registry.

Feast decorates its definition classes (FeatureView, Entity, Field, ...)
with typeguard's `@typechecked`, which, at import, reads each module's
source, rewrites it with argument checks and compiles it again: about half
of a worker's start-up CPU here (docs/operations.md, "Start-up time"),
paid again at every restart while the worker's partitions wait. The checks
catch wrong argument types in a repo's definition files, which is
`feast apply`'s job, not a worker's: a worker builds these objects from the
registry Feast wrote. So the long-running commands (`sluice worker`,
`serve`, `label-join`) import Feast with `@typechecked` as the identity,
the way typeguard itself behaves under `python -O`, and put typeguard back
afterwards. Every other command, and anything that imported Feast first,
keeps the checks.

Feast also checks a repo's offline store settings whenever it reads
feature_store.yaml, by importing the store's class: for the `file` store
that is dask (0.4 s of a quiet start, 1.9 s at load 5). A worker reads
online features only, and the repo it opens was checked by the `feast apply`
that wrote its registry (`open_store` refuses a feature_store.yaml changed
since), so the worker opens it with that check left out
(`offline_store_unvalidated`). The settings stay in the configuration as
written, and Feast resolves them, importing the class, where anything
uses the offline store.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


def import_feast_unchecked() -> bool:
    """Import `feast` with typeguard's decorator off; False (and nothing done) when Feast is already imported."""
    if "feast" in sys.modules:
        return False
    import typeguard

    checked = typeguard.typechecked

    def unchecked(target=None, **_options):
        return target if target is not None else (lambda inner: inner)

    typeguard.typechecked = unchecked
    try:
        import feast  # noqa: F401  (its definition modules bind the decorator now)
    finally:
        typeguard.typechecked = checked
    return True


def instrumented(function) -> bool:
    """Whether typeguard rewrote `function` with argument checks."""
    return "check_argument_types_internal" in function.__code__.co_names


class _Unvalidated:
    """Stands for an offline store's settings class while a configuration is read: accepts them as written."""

    def __init__(self, **_settings):
        pass


@contextmanager
def offline_store_unvalidated() -> Iterator[None]:
    """Read Feast configurations without importing the offline store's class to check its settings (see above)."""
    import feast.repo_config as repo_config

    resolve = repo_config.get_offline_config_from_type
    repo_config.get_offline_config_from_type = lambda _type: _Unvalidated
    try:
        yield
    finally:
        repo_config.get_offline_config_from_type = resolve
