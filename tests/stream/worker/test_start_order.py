"""What `sluice worker` does first: the model check's child starts before the worker's own imports.

The child imports numpy and LightGBM (0.5 s on a quiet machine); started
first, that runs while the worker imports Feast and Faust instead of after,
when the first `load_model` would wait for it (docs/operations.md, "Start-up
time"). A fresh interpreter, stopped where the worker would import Feast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import json, sys
import stream.feast.unchecked as unchecked
from stream.serving import model

def stop_here():
    checker = model._checker()
    print(json.dumps({{"checker_running": checker.proc is not None and checker.proc.poll() is None,
                       "lightgbm_here": "lightgbm" in sys.modules, "feast_here": "feast" in sys.modules}}), flush=True)
    raise SystemExit(0)

unchecked.import_feast_unchecked = stop_here
from stream.cli.main import main
main(["worker", "--bootstrap-servers", {bootstrap!r}])
"""


def test_the_worker_starts_the_model_check_child_before_it_imports_feast(broker):
    out = subprocess.run([sys.executable, "-c", PROBE.format(bootstrap=broker.bootstrap_servers)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # The child does the importing: the worker itself has not loaded LightGBM or Feast yet.
    assert seen == {"checker_running": True, "lightgbm_here": False, "feast_here": False}
