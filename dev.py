#!/usr/bin/env python3
"""Set-up and entry points for a fresh checkout; needs only Python 3.11+ and pip.

    python3 dev.py demo [sluice demo options]   # install (once), then run the demo
    python3 dev.py test [pytest options]        # install (once), then run the tests

Both create `.venv` and install Sluice with its dev and peers extras on first
use (and Quix Streams without its pins, see pyproject.toml), and reinstall
only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".sluice-installed"
#: Installed without its dependencies, which the `peers` extra lists: its own pins would take confluent-kafka
#: below the 2.13 Sluice needs (see pyproject.toml).
QUIX = "quixstreams>=3.28,<4"


def ensure_env() -> Path:
    python = BIN / "python"
    if not python.exists():
        print("creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + QUIX.encode()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != wanted:
        print("installing sluice and its dependencies into .venv (first run takes a few minutes)", flush=True)
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev,peers]"])
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", "--no-deps", QUIX])
        STAMP.write_text(wanted)
    return python


def _parallel(args: list[str]) -> list[str]:
    """Two pytest processes, one test file each at a time, unless the caller chose (-n, -p no:xdist).

    Most of the suite's time is waiting: for workers to start, for topics to
    go quiet. Two processes overlap that; each has its own broker and
    fixtures, and every test uses topics, groups and directories of its own.
    """
    chosen = any(a == "-n" or a.startswith("-n") or a == "no:xdist" for a in args)
    return [] if chosen else ["-n", "2", "--dist", "loadfile"]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "sluice"):
        print(__doc__)
        return 2
    python = ensure_env()
    os.chdir(ROOT)
    if argv[0] == "test":
        return subprocess.call([str(python), "-m", "pytest", *_parallel(argv[1:]), *argv[1:]])
    if argv[0] == "demo":
        return subprocess.call([str(BIN / "sluice"), "demo", *argv[1:]])
    return subprocess.call([str(BIN / "sluice"), *argv[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
