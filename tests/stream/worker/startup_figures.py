"""Figures for the operations guide: how long a worker takes from process start to ready (not a test).

    .venv/bin/python -m tests.stream.worker.startup_figures --runs 2

One embedded broker, the small test repo (built in a temp dir), one worker
started --runs times in a row with the same data directory; each start is
timed from `Popen` to the ready file (the worker holds its partitions).
`--profile DIR` also records each start with py-spy (raw stacks, 50 Hz).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from fraud_demo.generator import DemoConfig
from fraud_demo.prepare import prepare
from stream.kafka.broker import EmbeddedBroker
from stream.tools.process import worker_process
from tests.conftest import NOW, ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--profile", help="write py-spy raw stacks of each start here")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sluice-startup-"))
    cfg = DemoConfig(seed=11, n_cards=300, n_merchants=60, fraud_card_fraction=0.05, legit_label_delay=timedelta(hours=12))
    repo = prepare(ROOT / "feature_repo", base / "repo", cfg, history_days=10, history_end=NOW,
                   topic=f"txn-{uuid.uuid4().hex[:8]}", trees=30)
    py_spy = Path(sys.executable).with_name("py-spy")
    with EmbeddedBroker() as broker:
        for run in range(args.runs):
            worker = worker_process(broker.bootstrap_servers, repo.path, repo.model_dir, base, "w0",
                                    app_id="startup", env={"SLUICE_LOG_LEVEL": "info"})
            began = time.monotonic()
            worker.start()
            spy = None
            if args.profile:
                out = Path(args.profile) / f"start-{run}.txt"
                spy = subprocess.Popen([str(py_spy), "record", "-r", "50", "-f", "raw", "-o", str(out), "-p",
                                        str(worker.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                worker.wait_ready()
                print(f"start {run}: ready after {time.monotonic() - began:.2f} s", flush=True)
            finally:
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait()
                worker.stop()


if __name__ == "__main__":
    main()
