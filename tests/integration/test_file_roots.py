"""ARGUS_FILE_ROOTS for the daemon: local frames are read only under it (issue 27).

serve's side is in test_serve.py; the storage rules themselves (symlinks, `..`, FIFOs,
kernel pseudo-files) are tested here without a model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

from argus_embedder import cli, errors, settings
from argus_embedder.pipeline import storage
from tests import support
from tests.conftest import textured_jpeg
from tests.integration.test_roles import Login


def fetch(uri: str, roots: str | None = None) -> bytes:
    return storage.Storage(settings.load(env={}, file_roots=roots)).fetch(uri)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with a frame, a symlink out, a symlink in and a FIFO; a secret beside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "0.jpg").write_bytes(textured_jpeg(0))
    (tmp_path / "secret.txt").write_text("hunter2-planted\n")
    (root / "out.jpg").symlink_to(tmp_path / "secret.txt")
    (root / "in.jpg").symlink_to(root / "sub" / "0.jpg")
    os.mkfifo(root / "frame.fifo")
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def test_storage_reads_only_regular_files_under_the_roots(tree: Path) -> None:
    root = tree / "root"
    assert fetch(str(root / "sub" / "0.jpg"), str(root)) == textured_jpeg(0)
    assert fetch((root / "in.jpg").as_uri(), str(root)) == textured_jpeg(0)  # a link inside
    for uri in (
        str(tree / "secret.txt"),
        str(root / "out.jpg"),  # a symlink in the root that points out of it
        f"file://{root}/../secret.txt",
        f"file://{root}/..%2Fsecret.txt",
        "/proc/self/environ",
        "/etc/hostname",
    ):
        with pytest.raises(storage.OutsideRoots, match="outside ARGUS_FILE_ROOTS"):
            fetch(uri, f"{tree / 'elsewhere'}:{root}")
    # Unset: any regular file, but never a FIFO (which would block the read) or /proc.
    assert fetch(str(root / "out.jpg")) == b"hunter2-planted\n"
    for uri, reason in (
        (str(root / "frame.fifo"), "not a regular file"),
        ("/proc/self/environ", "a kernel pseudo-file"),
        ("/sys/kernel/mm/transparent_hugepage/enabled", "a kernel pseudo-file"),
        (str(root), "is a directory"),
        ("/dev/null", "not a regular file"),
    ):
        with pytest.raises(errors.FrameError, match=reason):
            fetch(uri)
    with pytest.raises(errors.FrameError, match="not a regular file"):
        fetch(str(root / "frame.fifo"), str(root))


def test_file_roots_are_checked_at_start(tree: Path) -> None:
    with pytest.raises(errors.ConfigError, match="must be an absolute directory"):
        settings.load(env={"ARGUS_FILE_ROOTS": "frames"})
    with pytest.raises(errors.ConfigError, match="must be an absolute directory"):
        settings.load(env={"ARGUS_FILE_ROOTS": f"{tree}::/srv"})
    with pytest.raises(errors.ConfigError, match="/no/such/dir is not a directory"):
        fetch(str(tree / "root" / "sub" / "0.jpg"), f"{tree}:/no/such/dir")
    # A root that is itself a symlink is where it points.
    (tree / "link-to-root").symlink_to(tree / "root")
    assert fetch(str(tree / "root" / "sub" / "0.jpg"), str(tree / "link-to-root"))


def test_the_daemon_gives_frames_outside_the_roots_an_error_row(
    conn: psycopg.Connection[Any],
    login: Login,
    tiny_siglip_dir: Path,
    tree: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before issue 27 the daemon read any file a frame row named; now a frame outside
    ARGUS_FILE_ROOTS gets an error row saying so, and the others of its job are embedded."""
    root = tree / "root"
    (tree / "outside.jpg").write_bytes(textured_jpeg(5))
    (root / "1.jpg").write_bytes(textured_jpeg(1))
    uris = [
        (root / "sub" / "0.jpg").as_uri(),
        str(tree / "outside.jpg"),
        str(root / "1.jpg"),
        (root / "out.jpg").as_uri(),
        f"{root}/../outside.jpg",
    ]
    job_id = support.add_video(conn, "roots", uris)
    assert job_id is not None
    support.use_database(monkeypatch, login("argus_worker"), tiny_siglip_dir)
    monkeypatch.setenv("ARGUS_FILE_ROOTS", str(root))
    assert cli.main(["run", "--burst"]) == 0
    assert support.job(conn, job_id)["status"] == "succeeded"
    rows = support.embeddings(conn, "roots")
    assert [row["frame_index"] for row in rows] == [0, 1, 2, 3, 4]
    for row in rows:
        if row["frame_index"] in (0, 2):
            assert row["embedding"] is not None and row["error"] is None
        else:
            assert row["embedding"] is None
            assert "outside ARGUS_FILE_ROOTS" in row["error"], row["error"]


def test_run_exits_78_on_a_root_that_is_no_directory(
    database_url: str, tiny_siglip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    support.use_database(monkeypatch, database_url, tiny_siglip_dir)
    for value in ("relative/frames", str(tmp_path / "missing")):
        monkeypatch.setenv("ARGUS_FILE_ROOTS", value)
        assert cli.main(["run", "--burst"]) == errors.EXIT_CONFIG, value
