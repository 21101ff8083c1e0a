"""The commands that run as services of a deployment (docker-compose.yml, deploy/k8s/), and what each serves.

tests/deploy/ checks the deployment files against this table: every
service here is deployed by both, on the port it serves by default, with the
probe paths it answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.cli.archive import DEFAULT_PORT as ARCHIVE_PORT
from stream.cli.deploy import ROLLOUT_PORT
from stream.cli.label_join import DEFAULT_PORT as LABEL_JOIN_PORT
from stream.cli.monitor import DEFAULT_PORT as MONITOR_PORT
from stream.cli.reasons import DEFAULT_PORT as REASONS_PORT
from stream.cli.ui import DEFAULT_PORT as UI_PORT
from stream.settings import Settings


@dataclass(frozen=True)
class Service:
    port: int  # the command's default HTTP port (the flag that sets it: port_flag)
    port_flag: str
    metrics: bool  # serves Prometheus metrics on stream.metrics.METRICS_PATH


#: Long-running: each answers /livez and /readyz on its port (stream.metrics, stream/health_http.py).
SERVICES = {
    "worker": Service(Settings().metrics_port, "--metrics-port", metrics=True),
    "monitor": Service(MONITOR_PORT, "--metrics-port", metrics=True),
    "rollout": Service(ROLLOUT_PORT, "--metrics-port", metrics=True),
    "ui": Service(UI_PORT, "--port", metrics=False),
    "archive": Service(ARCHIVE_PORT, "--metrics-port", metrics=True),
    "reasons": Service(REASONS_PORT, "--metrics-port", metrics=True),
    "label-join": Service(LABEL_JOIN_PORT, "--metrics-port", metrics=True),
}

#: Run on a schedule: each run reads its topic until quiet, writes its output and exits (no port, no probes).
SCHEDULED = ("labeled-sink",)
