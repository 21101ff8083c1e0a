"""Keep Feast's known, harmless warnings out of the CLI's output.

Feast warns on every registry read that stream feature views are alpha, and
on every Entity declared without a value_type that value_type will become
mandatory. Neither says anything a Sluice user can act on, and they drown
what a command prints. Exactly those warnings are ignored, matched by
message and category (the value_type one is attributed to whichever module
declares the entity, so it cannot be matched by module); any other warning
still shows.

`install` is called once when the CLI starts. It also appends the same
filters to PYTHONWARNINGS, so that every Python process the CLI starts (the
worker processes `python -m stream.cli worker`, which run `main()` again,
and `feast` itself) starts with them too.
"""

from __future__ import annotations

import os
import re
import warnings

#: (message prefix, category name) of every Feast warning the CLI hides;
#: a warning is hidden when its message starts with the prefix.
FEAST_WARNINGS: tuple[tuple[str, str], ...] = (
    ("Stream feature views are experimental features in alpha development", "RuntimeWarning"),
    ("Entity value_type will be mandatory in the next release", "DeprecationWarning"),
)

_CATEGORIES = {"RuntimeWarning": RuntimeWarning, "DeprecationWarning": DeprecationWarning}


def _pythonwarnings_entry(message: str, category: str) -> str:
    # -W's syntax is action:message:category:module:lineno (entries separated
    # by commas); the message is taken literally, matched at the start.
    if ":" in message or "," in message:
        raise ValueError(message)
    return f"ignore:{message}:{category}"


def install() -> None:
    for message, category in FEAST_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=_CATEGORIES[category])
    entries = [e for e in os.environ.get("PYTHONWARNINGS", "").split(",") if e]
    for message, category in FEAST_WARNINGS:
        entry = _pythonwarnings_entry(message, category)
        if entry not in entries:
            entries.append(entry)
    os.environ["PYTHONWARNINGS"] = ",".join(entries)
