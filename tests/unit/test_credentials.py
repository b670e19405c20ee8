"""Database URLs from systemd credentials: the read URL falls back to the write URL when
its credential is missing or empty (the serve unit's `SetCredential=read-database-url:`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from argus_embedder import db, settings


@pytest.mark.parametrize("read_credential", [None, "", "\n"])
def test_a_missing_or_empty_read_credential_reads_from_the_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_credential: str | None
) -> None:
    (tmp_path / "database-url").write_text("postgresql://argus@primary/frames\n")
    if read_credential is not None:
        (tmp_path / "read-database-url").write_text(read_credential)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = settings.load(env={})
    assert db.resolve_read_url(config) == "postgresql://argus@primary/frames"


def test_a_read_credential_is_read_before_the_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "database-url").write_text("postgresql://argus@primary/frames\n")
    (tmp_path / "read-database-url").write_text("postgresql://reader@standby/frames\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = settings.load(env={})
    assert db.resolve_read_url(config) == "postgresql://reader@standby/frames"
    assert db.resolve_url(config) == "postgresql://argus@primary/frames"
