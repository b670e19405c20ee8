"""The README's commands are the ones CI and the code really use."""

from __future__ import annotations

import re
from pathlib import Path

from argus_embedder import cli, settings

ROOT = Path(__file__).resolve().parents[2]


def test_readme_test_command_is_the_one_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'^TEST_COMMAND="(.+)"$', ci, re.MULTILINE)
    assert match, "TEST_COMMAND missing from .ci/run"
    assert match[1] in (ROOT / "README.md").read_text()


def test_readme_shows_the_demo_command() -> None:
    assert "argus-embedder demo" in (ROOT / "README.md").read_text()


def test_readme_documents_every_variable_and_command() -> None:
    readme = (ROOT / "README.md").read_text()
    for variable in settings.VARIABLES:
        assert f"`{variable.env}`" in readme
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in commands:
        assert f"`{command}" in readme, command
