"""The demo's printed next steps name an argus-embedder this shell can run (issue 30:
it printed `argus-embedder …`, which is not on PATH after the README's venv install)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from argus_embedder.commands import demo

SCRIPT = Path(sys.executable).parent / "argus-embedder"

needs_script = pytest.mark.skipif(
    not SCRIPT.exists(), reason="no argus-embedder script beside this interpreter"
)


@needs_script
def test_the_bare_name_when_path_finds_this_installation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", str(SCRIPT.parent))
    assert demo.invocation() == "argus-embedder"


@needs_script
def test_the_venv_path_relative_to_the_current_directory_when_not_on_path_regression_issue30(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: always `argus-embedder`, whatever PATH held."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.chdir(SCRIPT.parent.parent.parent)  # the folder holding the venv
    shown = demo.invocation()
    relative = os.path.relpath(SCRIPT)  # .venv/bin/argus-embedder after the README's install
    assert shown in (relative, "./" + relative)
    assert Path(shown).resolve() == SCRIPT.resolve()


@needs_script
def test_the_absolute_path_from_elsewhere_and_when_path_finds_another_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "argus-embedder"  # another installation's script, first on PATH
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert demo.invocation() == str(SCRIPT)


def test_model_files_get_the_modes_the_umask_allows(tmp_path: Path) -> None:
    """safetensors writes weights 0600; the demo's model must be readable by the
    service user (issue 30)."""
    model = tmp_path / "model"
    model.mkdir(mode=0o700)
    weights = model / "model.safetensors"
    weights.write_bytes(b"0")
    weights.chmod(0o600)
    previous = os.umask(0o022)
    try:
        demo.readable_by_all(model)
    finally:
        os.umask(previous)
    assert weights.stat().st_mode & 0o777 == 0o644
    assert model.stat().st_mode & 0o777 == 0o755


@needs_script
def test_the_script_as_typed_when_not_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A venv reached through a symlink (`.venv -> elsewhere`) shows as the user typed it."""
    (tmp_path / ".venv").symlink_to(SCRIPT.parent.parent)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "argv", [".venv/bin/argus-embedder", "demo"])
    assert demo.invocation() == ".venv/bin/argus-embedder"
