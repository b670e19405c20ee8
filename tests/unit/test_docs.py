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


def _commands() -> list[str]:
    parser = cli.build_parser()
    return list(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_contract_documents_every_variable_command_and_channel() -> None:
    contract = (ROOT / "docs" / "contract.md").read_text()
    for variable in settings.VARIABLES:
        assert f"`{variable.env}`" in contract, variable.env
    for name in ("ARGUS_DECODE", "ARGUS_FILE_ROOTS"):  # the contract's, wherever the code is
        assert f"`{name}`" in contract, name
    for command in _commands():
        assert f"`{command}" in contract, command
    for channel in ("argus_embedding_jobs", "argus_embedding_done"):
        assert f"`{channel}`" in contract
    payload = '{"job_id", "video_id", "project_id", "model", "status", "frames_total", '
    assert payload in contract.replace("\n", " ")
    for table in ("frames", "frame_embeddings", "embedding_jobs", "projects"):
        assert f"`argus.{table}`" in contract, table


def test_readme_links_the_contract_and_nothing_outside_the_repository() -> None:
    """Issue 30: the README named "DESIGN.md of the team's shared folder"."""
    readme = (ROOT / "README.md").read_text()
    assert "(docs/contract.md)" in readme
    assert "DESIGN.md" not in readme and "shared folder" not in readme
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), target
