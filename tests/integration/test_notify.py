"""The schema's NOTIFYs (DESIGN §2): argus_embedding_jobs on enqueue, which daemons LISTEN
on, and argus_embedding_done when a job's status becomes final, for applications."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from argus_embedder import db
from argus_embedder.gateways import queue
from argus_embedder.pipeline import embedder, worker
from tests import support
from tests.conftest import S3Endpoint, textured_jpeg

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


# --- completions: argus_embedding_done (DESIGN §2, issue 29) ------------------------

DONE = "argus_embedding_done"
PAYLOAD_KEYS = {
    "job_id",
    "video_id",
    "project_id",
    "model",
    "status",
    "frames_total",
    "frames_done",
    "frames_failed",
}


@pytest.fixture
def done_listener(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection LISTENing on argus_embedding_done, as an application would."""
    with db.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {DONE}")
        yield listener


def announced(listener: psycopg.Connection[Any], *, wait: float = 0.5) -> list[dict[str, Any]]:
    """The completion payloads that reach `listener` within `wait` seconds, parsed;
    each is checked to be under PostgreSQL's 8,000-byte limit on the way."""
    payloads = []
    for notify in listener.notifies(timeout=wait):
        assert notify.channel == DONE
        assert len(notify.payload.encode()) < 8000
        payloads.append(json.loads(notify.payload))
    return payloads


def test_a_job_the_daemon_finishes_is_announced_with_its_counts(
    conn: psycopg.Connection[Any],
    done_listener: psycopg.Connection[Any],
    s3: S3Endpoint,
    tiny_siglip_dir: Path,
) -> None:
    uris = [s3.put(f"done/{i}.jpg", textured_jpeg(i)) for i in range(3)]
    uris.append(f"s3://{s3.bucket}/done/missing.jpg")
    job_id = support.add_video(conn, "done", uris, project_id="p1")
    model = embedder.load_embedder(str(tiny_siglip_dir), "cpu", batch_size=8)
    config = support.worker_settings(conn.info.dsn, s3.bucket, s3.url, model.model, batch_size=8)
    with worker.Worker(config, conn.info.dsn, model) as loop:
        loop.run(burst=True)
    assert support.job(conn, job_id)["status"] == "succeeded"  # type: ignore[arg-type]

    [payload] = announced(done_listener)
    assert set(payload) == PAYLOAD_KEYS
    assert payload == {
        "job_id": job_id,
        "video_id": "done",
        "project_id": "p1",
        "model": str(tiny_siglip_dir),
        "status": "succeeded",
        "frames_total": 4,
        "frames_done": 4,
        "frames_failed": 1,
    }


def test_a_job_failed_for_good_is_announced_and_a_retried_one_is_not(
    conn: psycopg.Connection[Any], done_listener: psycopg.Connection[Any]
) -> None:
    conn.execute(
        "INSERT INTO argus.embedding_jobs (video_id, max_attempts) VALUES ('once', 1), ('twice', 2)"
    )
    jobs = queue.Queue(model="m", worker_id="w", lease_seconds=60)
    claimed = {job.video_id: job for job in jobs.claim(conn, limit=2)}
    assert jobs.fail(conn, claimed["twice"], "boom") == "queued"
    assert announced(done_listener) == []  # queued again: not final, nothing announced
    assert jobs.fail(conn, claimed["once"], "boom") == "failed"

    [payload] = announced(done_listener)
    assert payload == {
        "job_id": claimed["once"].id,
        "video_id": "once",
        "project_id": None,
        "model": "m",
        "status": "failed",
        "frames_total": None,
        "frames_done": 0,
        "frames_failed": 0,
    }


def test_an_operators_plain_update_cancelling_a_queued_job_is_announced(
    conn: psycopg.Connection[Any], done_listener: psycopg.Connection[Any]
) -> None:
    """No daemon ever claimed the job: the database itself announces it."""
    job_id = queue.enqueue(conn, "never-claimed", model=None, priority=0)
    conn.execute("UPDATE argus.embedding_jobs SET status = 'cancelled' WHERE id = %s", (job_id,))
    [payload] = announced(done_listener)
    assert (payload["job_id"], payload["status"], payload["model"]) == (job_id, "cancelled", None)
    assert set(payload) == PAYLOAD_KEYS

    # Status unchanged (already final), or other columns only: nothing more is said.
    conn.execute("UPDATE argus.embedding_jobs SET status = 'cancelled' WHERE id = %s", (job_id,))
    conn.execute("UPDATE argus.embedding_jobs SET priority = 3 WHERE id = %s", (job_id,))
    assert announced(done_listener) == []
    # retry, then cancel again: a second final status, a second announcement.
    assert queue.retry(conn, job_id)  # type: ignore[arg-type]
    assert queue.cancel(conn, job_id)  # type: ignore[arg-type]
    assert [p["status"] for p in announced(done_listener)] == ["cancelled"]


def test_a_10kb_video_id_is_cut_to_fit_the_payload_and_the_job_still_completes(
    conn: psycopg.Connection[Any], done_listener: psycopg.Connection[Any]
) -> None:
    """pg_notify refuses a payload of 8,000 bytes or more, which would fail the UPDATE
    that completes the job (and roll back its last vectors). The frame stage's ids are
    any text: here 10,000 characters that JSON escapes to ~22 KB (quotes, control
    characters, two-byte letters)."""
    hostile = ('é"\x01\\' * 2500)[:10_000]
    assert len(hostile) == 10_000
    conn.execute(
        "INSERT INTO argus.embedding_jobs (video_id, project_id) VALUES (%s, %s)",
        (hostile, hostile),
    )
    jobs = queue.Queue(model="m" * 3000, worker_id="w", lease_seconds=60)
    [job] = jobs.claim(conn)
    assert jobs.complete_many(conn, [job]) == {job.id}
    assert support.job(conn, job.id)["status"] == "succeeded"

    [payload] = announced(done_listener)
    assert set(payload) == PAYLOAD_KEYS | {"truncated"}
    assert payload["truncated"] is True
    assert payload["job_id"] == job.id and payload["status"] == "succeeded"
    assert 100 <= len(payload["video_id"]) < len(hostile)
    assert hostile.startswith(payload["video_id"])
    assert hostile.startswith(payload["project_id"])
    assert payload["model"] == "m" * len(payload["model"])

    # An id that fits is never cut, and the payload says nothing of truncation.
    job_id = queue.enqueue(conn, "x" * 2000, model=None, priority=0)
    conn.execute("UPDATE argus.embedding_jobs SET status = 'cancelled' WHERE id = %s", (job_id,))
    [payload] = announced(done_listener)
    assert payload["video_id"] == "x" * 2000 and "truncated" not in payload
