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
"""

from __future__ import annotations

import sys


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
