"""Long-running commands import Feast without typeguard's instrumentation, and nothing else changes.

Each check runs in a fresh interpreter: whether Feast's classes carry
typeguard's argument checks is decided once, when Feast is first imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import json, sys
import typeguard
original = typeguard.typechecked
{prelude}
import feast.entity, feast.feature_view, feast.field
from stream.feast.unchecked import instrumented
print(json.dumps({{
    "instrumented": [instrumented(c.__init__) for c in (feast.feature_view.FeatureView, feast.entity.Entity, feast.field.Field)],
    "decorator_restored": typeguard.typechecked is original,
    "scipy_stats": "scipy.stats" in sys.modules,
}}))
"""


def _probe(prelude: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(prelude=prelude)], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_feast_imported_unchecked_has_no_argument_checks_and_typeguard_is_put_back():
    plain = _probe("")
    assert plain["instrumented"] == [True, True, True]  # what Feast does on its own: the probe can tell
    unchecked = _probe("from stream.feast.unchecked import import_feast_unchecked\nassert import_feast_unchecked()")
    assert unchecked["instrumented"] == [False, False, False]
    assert unchecked["decorator_restored"]


def test_building_the_cli_imports_neither_feast_nor_scipy_stats():
    # Every `sluice` command builds the whole parser first: seconds of imports here delay every start.
    prelude = "import importlib\nimportlib.import_module('stream.cli.main').build_parser()\nassert 'feast' not in sys.modules\n"
    assert _probe(prelude)["scipy_stats"] is False
