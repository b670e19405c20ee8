"""The enqueue trigger's NOTIFY: daemons LISTEN on argus_embedding_jobs (DESIGN §2)."""

from __future__ import annotations

from typing import Any

import psycopg

from argus_embedder import db

CHANNEL = "argus_embedding_jobs"


def notifications(listener: psycopg.Connection[Any], *, wait: float) -> int:
    """How many notifications reach `listener` within `wait` seconds."""
    return sum(1 for _ in listener.notifies(timeout=wait))


def test_regression_bug4_notify_only_when_a_job_was_inserted(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    """Regression (issue 16 bug 4): an enqueue absorbed by ON CONFLICT DO NOTHING inserts
    nothing and must notify nothing, or a steady stream of duplicate enqueues fills the
    NOTIFY queue behind any listener that is slow to read it."""
    with db.connect(database_url, autocommit=True) as listener:
        listener.execute(db.queries()["listen"])
        enqueue = "INSERT INTO argus.embedding_jobs (video_id) VALUES (%s) ON CONFLICT DO NOTHING"

        conn.execute(enqueue, ("v",))
        assert notifications(listener, wait=0.5) == 1  # a real insert wakes the daemons
        conn.execute(enqueue, ("v",))
        assert notifications(listener, wait=0.5) == 0  # absorbed: nothing new to claim

        row = conn.execute("SELECT argus.enqueue_embedding_job('w') AS id").fetchone()
        assert row is not None and row["id"] is not None
        assert notifications(listener, wait=0.5) == 1
        row = conn.execute("SELECT argus.enqueue_embedding_job('w') AS id").fetchone()
        assert row is not None and row["id"] is None
        assert notifications(listener, wait=0.5) == 0

        # One statement inserting several jobs still notifies once.
        conn.execute(
            "INSERT INTO argus.embedding_jobs (video_id) VALUES ('x'), ('y'), ('v') "
            "ON CONFLICT DO NOTHING"
        )
        assert notifications(listener, wait=0.5) == 1
    jobs = conn.execute("SELECT count(*) AS n FROM argus.embedding_jobs").fetchone()
    assert jobs is not None and jobs["n"] == 4
