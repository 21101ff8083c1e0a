"""The flags several commands share, each added only where the command uses it.

A flag backed by a Settings field states its environment variable and its
default in the help, both taken from stream/settings.py (`ENV` and the
dataclass defaults), so the help cannot drift from what the command does.
tests/stream/cli/test_help.py checks every such flag.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from stream.settings import ENV, Settings

DEFAULTS = Settings()

#: --log-level's names, as Faust takes them, and the logging level each means for the CLI's own log.
LOG_LEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
              "debug": logging.DEBUG}


def log_level(name: str) -> int:
    """The logging level of a --log-level / SLUICE_LOG_LEVEL value (Faust's names, or Python's in any case)."""
    lowered = name.lower()
    if lowered in LOG_LEVELS:
        return LOG_LEVELS[lowered]
    level = logging.getLevelName(lowered.upper())
    return level if isinstance(level, int) else logging.WARNING


def env_default(name: str) -> str:
    """'env SLUICE_X; default V' for Settings field `name` ('env SLUICE_X' when it has no default value)."""
    default = getattr(DEFAULTS, name)
    if default is None:
        return f"env {ENV[name]}"
    shown = default.as_posix() if isinstance(default, Path) else default
    return f"env {ENV[name]}; default {shown}"


def add_broker(p: argparse.ArgumentParser, use: str) -> None:
    """--bootstrap-servers; `use` is "embedded" (optional: without it the command starts its own broker),
    "required", or the help of a command that talks to a broker only for part of its work."""
    helps = {
        "embedded": "Kafka bootstrap servers, host:port[,host:port...] "
                    f"({env_default('bootstrap_servers')}); without it: start an embedded broker for this run",
        "required": f"the workers' Kafka bootstrap servers, host:port[,host:port...] (required; {env_default('bootstrap_servers')})",
    }
    p.add_argument("--bootstrap-servers", help=helps.get(use, use))


def add_repo(p: argparse.ArgumentParser, service: bool = True) -> None:
    p.add_argument("--repo", dest="repo_path", help=f"Feast feature repository ({env_default('repo_path')})")
    if service:
        p.add_argument(
            "--feature-service",
            help=f"FeatureService to use ({env_default('feature_service')}; default: the repo's only one)",
        )


def add_model_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", help=f"model directory ({env_default('model_dir')})")


def add_app_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app-id", help=f"Faust app id = consumer group, one per pipeline ({env_default('app_id')})")


def add_partitions(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--partitions", type=int,
        help="partitions of an events topic that does not exist yet; an existing events topic decides the count "
        f"of every topic the worker makes ({env_default('partitions')})",
    )


def add_log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level", choices=list(LOG_LEVELS),
        help=f"log level ({env_default('log_level')}: problems only; info adds routine events such as deployment "
        "swaps, warm start and ramp steps)",
    )


def add_common(p: argparse.ArgumentParser) -> None:
    """Every shared flag, for a command that uses them all (the broker optional: embedded without it)."""
    add_broker(p, "embedded")
    add_repo(p)
    add_model_dir(p)
    add_app_id(p)
    add_partitions(p)
    add_log_level(p)


def add_group_service(p: argparse.ArgumentParser, group_suffix: str, port: int) -> None:
    """The flags of a service that reads a consumer group's topics in a group of its own, `<app id>-<group_suffix>`."""
    add_broker(p, "required")
    add_repo(p)
    add_model_dir(p)
    p.add_argument("--app-id", help=f"the workers' app id; read in group <app id>-{group_suffix} ({env_default('app_id')})")
    add_partitions(p)
    add_log_level(p)
    p.add_argument(
        "--metrics-port", type=int, default=port,
        help=f"port of /metrics, /livez and /readyz, 0 = off (default {port}, not the worker's SLUICE_METRICS_PORT)",
    )


def settings_of(args) -> Settings:
    """The process's settings: the environment, overridden by the command line's options where given."""
    names = (
        "bootstrap_servers", "repo_path", "feature_service", "model_dir", "app_id", "partitions", "log_level", "store",
        "metrics_port", "warm_state", "max_event_ahead_ms", "registry", "serve_port",
    )
    return Settings.from_env(**{n: getattr(args, n, None) for n in names})
