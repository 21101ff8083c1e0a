"""Operate on a Feast repository the way its keepers do: `feast apply`, `feast materialize`."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from features.errors import SluiceError


def feast(repo_path: str | Path, *args: str, timeout_s: float = 600) -> str:
    """Run the Feast CLI on `repo_path`; raise with its output when it fails."""
    cmd = [sys.executable, "-m", "feast.cli.cli", "--chdir", str(repo_path), *args]
    env = dict(os.environ, FEAST_USAGE="False", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        msg = f"`feast {' '.join(args)}` failed in {repo_path}:\n" + "\n".join(tail)
        raise SluiceError(msg)
    return proc.stdout


def apply(repo_path: str | Path) -> str:
    return feast(repo_path, "apply")


def materialize(repo_path: str | Path, start: datetime, end: datetime, views: list[str] | None = None) -> str:
    args = ["materialize", start.isoformat(), end.isoformat()]
    for view in views or []:
        args += ["--views", view]
    return feast(repo_path, *args)
