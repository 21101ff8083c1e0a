"""The README stays a user's guide and the reference in docs/ stays complete."""

from __future__ import annotations

import re

from stream.cli.main import build_parser
from stream.cli.examples import subcommands
from stream.settings import ENV
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def test_readme_is_a_guide_not_a_notebook():
    assert len(README.splitlines()) <= 300
    assert not re.search(r"\bissue\s+#?\d+", README, re.IGNORECASE)
    for link in re.findall(r"\]\((docs/[\w.-]+\.md)", README):
        assert (ROOT / link).exists(), link


def test_every_environment_variable_is_in_the_settings_reference():
    missing = [var for var in ENV.values() if f"`{var}`" not in OPERATIONS]
    assert not missing, f"document these in docs/operations.md: {missing}"


def test_every_command_is_in_the_command_reference():
    commands = {path.split()[0] for path, _ in subcommands(build_parser()) if path}
    missing = [c for c in sorted(commands) if f"`sluice {c}" not in OPERATIONS]
    assert not missing, f"document these in docs/operations.md: {missing}"
