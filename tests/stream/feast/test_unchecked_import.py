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


def test_a_worker_opens_its_repo_without_importing_the_offline_store(trained_repo):
    # Feast checks the offline store's settings by importing its class (dask for
    # `file`) whenever it reads feature_store.yaml; a worker reads online only.
    probe = f"""
import json, sys
from stream.feast.unchecked import import_feast_unchecked, offline_store_unvalidated
import_feast_unchecked()
import feast.repo_config
resolve = feast.repo_config.get_offline_config_from_type
from stream.worker.app import build_engine
from stream.settings import Settings
settings = Settings(repo_path={str(trained_repo["path"])!r}, model_dir={str(trained_repo["model_dir"])!r})
engine, store = build_engine(settings)
opened = "dask" in sys.modules
restored = feast.repo_config.get_offline_config_from_type is resolve
kind = type(store.config.offline_store).__name__  # resolved as written, where used
print(json.dumps({{"dask_at_open": opened, "restored": restored, "offline_config": kind}}))
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=180)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"dask_at_open": False, "restored": True, "offline_config": "DaskOfflineStoreConfig"}
