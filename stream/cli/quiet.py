"""Keep Feast's known, harmless warnings out of the CLI's output.

Feast warns on every registry read that stream feature views are alpha, and
on every Entity declared without a value_type that value_type will become
mandatory. Neither says anything a Sluice user can act on, and they drown
what a command prints. Exactly those warnings are hidden, matched by category
and the start of their message (the value_type one is attributed to whichever
module declares the entity, so it cannot be matched by module); every other
warning still shows.

A filter alone does not hold: importing Feast runs
`warnings.simplefilter("once", RuntimeWarning)` and the same for
DeprecationWarning (feast/stream_feature_view.py, feature_store.py and
others), which go in front of every filter installed before, and the CLI
imports Feast only when a command needs it. So `install` adds the filters
and also wraps `warnings.showwarning`, the function that prints a warning
that got through the filters, to drop the same two.

`install` is called once, first thing in `main()`. Worker processes the CLI
starts run `python -m stream.cli worker`, that is `main()` again, so they
install the same.
"""

from __future__ import annotations

import re
import warnings

#: (category, start of the message) of every Feast warning the CLI hides.
FEAST_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (RuntimeWarning, "Stream feature views are experimental features in alpha development"),
    (DeprecationWarning, "Entity value_type will be mandatory in the next release"),
)


def is_known(message, category) -> bool:
    """Whether a warning (its message or Warning instance, and category) is one of FEAST_WARNINGS."""
    text = str(message)
    return any(issubclass(category, known) and text.startswith(start) for known, start in FEAST_WARNINGS)


def install() -> None:
    for category, start in FEAST_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(start), category=category)
    shown = warnings.showwarning
    if getattr(shown, "sluice_quiet", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not is_known(message, category):
            shown(message, category, filename, lineno, file, line)

    showwarning.sluice_quiet = True
    warnings.showwarning = showwarning
