"""Every command's --help is complete and true: each option explained, one example that parses, the defaults it states."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from stream.cli.examples import subcommands
from stream.cli.main import build_parser
from stream.settings import ENV, Settings

SETTINGS_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING}
COMMANDS = list(subcommands(build_parser()))


def _options(p: argparse.ArgumentParser):
    """The actions a user passes (options and positionals), not -h, --version or the subcommand slot."""
    for action in p._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction):
            continue
        yield action


def _name(action) -> str:
    return "/".join(action.option_strings) or action.dest


def _shown(value) -> str:
    return value.as_posix() if isinstance(value, Path) else str(value)


def _same(stated: str, actual) -> bool:
    try:
        return float(stated) == float(actual)
    except (TypeError, ValueError):
        return stated == _shown(actual)


def test_every_command_is_walked():
    paths = {path for path, _ in COMMANDS}
    assert {"worker", "deploy canary", "models show", "monitor", "bench", "chaos", "ui"} <= paths


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[path or "sluice" for path, _ in COMMANDS])
def test_every_option_and_subcommand_has_help(path, parser):
    missing = [_name(a) for a in _options(parser) if not (a.help or "").strip()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            missing += [c.dest for c in action._choices_actions if not (c.help or "").strip()]
    assert missing == [], f"`sluice {path}`: no help for {missing}"


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[path or "sluice" for path, _ in COMMANDS])
def test_every_command_shows_one_example_that_parses(path, parser):
    assert parser.formatter_class is argparse.RawDescriptionHelpFormatter
    epilog = parser.epilog or ""
    assert epilog.startswith("example:\n  sluice"), f"`sluice {path}` has no example"
    line = epilog.splitlines()[1].split("  # ")[0]
    argv = shlex.split(line)[1:]
    assert argv[: len(path.split())] == path.split(), line
    build_parser().parse_args(argv)  # exits (SystemExit) on an option that does not exist or a bad value


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[path or "sluice" for path, _ in COMMANDS])
def test_stated_defaults_and_variables_are_the_real_ones(path, parser):
    """A default stated in help is the option's own default or, for an option backed by a Settings field (its help
    names the variable), the field's default in stream/settings.py."""
    wrong = []
    for action in _options(parser):
        text = " ".join((action.help or "").split())
        variable = re.search(r"\benv (SLUICE_\w+)", text)
        if variable and variable.group(1) != ENV.get(action.dest):
            wrong.append(f"{_name(action)} names {variable.group(1)}, but it sets {action.dest}")
        if action.default not in (None, argparse.SUPPRESS, False, []):
            actual = action.default
            if variable:
                wrong.append(f"{_name(action)} has its own default {actual!r}, so {variable.group(1)} does not apply")
        else:  # a Settings-backed option (one that names its variable) falls back to the Settings default
            actual = SETTINGS_DEFAULTS.get(action.dest) if variable else None
        stated = re.search(r"\bdefault:? ([^\s,;)]+)", text)
        if actual is not None and stated and not _same(stated.group(1).rstrip(":"), actual):
            wrong.append(f"{_name(action)} states default {stated.group(1)!r}, the real one is {_shown(actual)!r}")
    assert wrong == [], f"`sluice {path}`: {wrong}"


def test_settings_backed_options_state_the_settings_default():
    """The worker reads every shared setting: each flag names its variable and the default of stream/settings.py."""
    worker = dict(COMMANDS)["worker"]
    for action in _options(worker):
        if action.dest in ENV:
            default = SETTINGS_DEFAULTS[action.dest]
            expected = f"env {ENV[action.dest]}" + ("" if default is None else f"; default {_shown(default)}")
            assert expected in " ".join(action.help.split()), _name(action)
    store = next(a for a in _options(worker) if a.dest == "store")
    assert "default rocksdb://" in store.help and "memory:// (default)" not in store.help


def test_commands_without_a_broker_offer_no_broker_options():
    for path in ("warm", "backfill"):
        dests = {a.dest for a in _options(dict(COMMANDS)[path])}
        assert not dests & {"bootstrap_servers", "app_id", "partitions"}, path
    train = next(a for a in _options(dict(COMMANDS)["train"]) if a.dest == "bootstrap_servers")
    assert "only with --from-labeled" in train.help
    for path, parser in COMMANDS:
        for action in _options(parser):
            if action.dest == "bootstrap_servers" and path.split()[0] in ("deploy", "rollout", "monitor", "ui", "labeled-sink"):
                assert "required" in action.help and "embedded" not in action.help, path


def test_models_show_takes_the_repo_its_online_evaluation_reads():
    args = build_parser().parse_args(["models", "show", "champion", "--repo", "my_repo", "--feature-service", "fs"])
    assert (args.repo_path, args.feature_service) == ("my_repo", "fs")


def test_worker_takes_max_event_ahead_ms_and_explains_it():
    args = build_parser().parse_args(["worker", "--max-event-ahead-ms", "900000"])
    assert args.max_event_ahead_ms == 900000
    from stream.cli.main import _settings

    assert _settings(args).max_event_ahead_ms == 900000
    text = " ".join(next(a for a in _options(dict(COMMANDS)["worker"]) if a.dest == "max_event_ahead_ms").help.split())
    for words in ("clock", "dead-lettered", "future_time", "stream time", ".late", "clock skew"):
        assert words in text


def test_version_prints_the_installed_package_version():
    done = subprocess.run([sys.executable, "-m", "stream.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"sluice {version('sluice')}"
