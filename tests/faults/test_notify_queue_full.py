"""A listener that never reads fills PostgreSQL's NOTIFY queue: jobs still finish.

The queue is the whole cluster's, emptied only as fast as its slowest listener. Once
full, every transaction that NOTIFYs fails at COMMIT, so before migration 0015 a
session that LISTENs inside an open transaction (or never reads) made every enqueue and,
with completion notifications, every job's completion fail. The test gets its own
embedded PostgreSQL with the smallest queue there is (max_notify_queue_pages = 64,
512 KB), so filling it takes a hundred notifications, not 8 GB.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from argus_embedder import db
from argus_embedder.gateways import queue
from tests.faults.test_postgres_restart import PrivateServer, private_server

__all__ = ["private_server"]  # the fixture, shared with the restart test


def fill_queue(connection: psycopg.Connection[Any]) -> float:
    """NOTIFY until PostgreSQL refuses one (the queue is full); returns its usage."""
    for _ in range(10_000):
        try:
            connection.execute("SELECT pg_notify('filler', repeat('x', 7000))")
        except psycopg.errors.ProgramLimitExceeded:
            row = connection.execute("SELECT pg_notification_queue_usage() AS usage").fetchone()
            assert row is not None
            return float(row["usage"])
    raise AssertionError("the NOTIFY queue never filled")


def test_a_listener_that_never_reads_blocks_no_enqueue_and_no_completion(
    private_server: PrivateServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with psycopg.connect(private_server.admin_url, autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET max_notify_queue_pages = 64")
        admin.execute("CREATE DATABASE argus")
    private_server.stop()
    private_server.start()
    url = private_server.url_for("argus")
    db.migrate(url)
    monkeypatch.setattr(db, "_UNANNOUNCED_LOGGED", False)
    caplog.set_level(logging.WARNING, logger="argus_embedder.db")

    with (
        db.connect(url, autocommit=True) as stuck,
        db.connect(url, autocommit=True) as connection,
    ):
        stuck.execute("LISTEN argus_embedding_done")
        stuck.execute("BEGIN")  # a listener inside a transaction reads nothing: it pins
        stuck.execute("SELECT 1")
        assert fill_queue(connection) > 0.9

        # The frame stage's enqueue (the wake-up trigger's NOTIFY) still commits.
        connection.execute("INSERT INTO argus.embedding_jobs (video_id) VALUES ('a'), ('b')")
        job_id = queue.enqueue(connection, "c", model=None, priority=0)
        # The daemon's completions commit: their jobs finish, unannounced.
        jobs = queue.Queue(model="m", worker_id="w", lease_seconds=60)
        claimed = jobs.claim(connection, limit=2)
        assert len(claimed) == 2
        assert jobs.complete_many(connection, claimed) == {job.id for job in claimed}
        # So does an operator's plain cancel.
        connection.execute(
            "UPDATE argus.embedding_jobs SET status = 'cancelled' WHERE id = %s", (job_id,)
        )
        statuses = connection.execute(
            "SELECT status FROM argus.embedding_jobs ORDER BY id"
        ).fetchall()
        assert [row["status"] for row in statuses] == ["succeeded", "succeeded", "cancelled"]
        stuck.execute("ROLLBACK")

    said = [record.getMessage() for record in caplog.records]
    unannounced = [line for line in said if "not announced on argus_embedding_done" in line]
    assert len(unannounced) == 1, said  # three completions, said once
    assert "NOTIFY queue is" in unannounced[0] and "full" in unannounced[0]
