"""Helpers shared by the integration and acceptance tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from argus_embedder import settings
from argus_embedder.gateways import frames, queue


def add_video(
    connection: psycopg.Connection[Any],
    video_id: str,
    uris: list[str],
    *,
    enqueue: bool = True,
    priority: int = 0,
    project_id: str | None = None,
    first_index: int = 0,
) -> int | None:
    """Insert a video's frames the way the frame stage does, then (optionally) its job."""
    frames.insert(
        connection,
        [
            frames.NewFrame(video_id, first_index + i, uri, project_id=project_id)
            for i, uri in enumerate(uris)
        ],
    )
    if not enqueue:
        return None
    return queue.enqueue(connection, video_id, model=None, priority=priority)


def job(connection: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    row = connection.execute(
        "SELECT * FROM argus.embedding_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row is not None
    return dict(row)


def embeddings(connection: psycopg.Connection[Any], video_id: str) -> list[dict[str, Any]]:
    return connection.execute(
        "SELECT e.*, f.frame_index FROM argus.frame_embeddings e "
        "JOIN argus.frames f ON f.id = e.frame_id WHERE f.video_id = %s ORDER BY f.frame_index",
        (video_id,),
    ).fetchall()


def worker_settings(
    database_url: str, bucket: str, endpoint: str, model: str, *, batch_size: int, **extra: Any
) -> settings.Settings:
    """Settings for an in-process Worker against the test database and S3 endpoint."""
    values = {
        "database_url": database_url,
        "model": model,
        "device": "cpu",
        "batch_size": str(batch_size),
        "s3_bucket": bucket,
        "s3_endpoint_url": endpoint,
        "metrics_port": "0",
        "poll_interval": "0.1",
        "worker_id": "test-worker",
        **{key: str(value) for key, value in extra.items()},
    }
    return settings.load(env={}, **values)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every 50 ms; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def claim_plans(connection: psycopg.Connection[Any], q: queue.Queue, limit: int = 1) -> str:
    """The plans of every statement argus.claim_jobs runs for one claim (auto_explain
    at NOTICE level, nested statements), the claim itself rolled back."""
    notices: list[str] = []

    def keep(diagnostic: psycopg.errors.Diagnostic) -> None:
        notices.append(diagnostic.message_primary or "")

    connection.add_notice_handler(keep)
    try:
        with connection.transaction(force_rollback=True):
            connection.execute("LOAD 'auto_explain'")
            for setting in (
                "auto_explain.log_min_duration = 0",
                "auto_explain.log_nested_statements = on",
                "auto_explain.log_level = notice",
            ):
                connection.execute(f"SET LOCAL {setting}")  # type: ignore[arg-type]
            connection.execute(
                "SELECT * FROM argus.claim_jobs(%s, %s, %s, %s, false)",
                (q.model, q.worker_id, limit, q.lease_seconds),
            ).fetchall()
    finally:
        connection.remove_notice_handler(keep)
    return "\n".join(notices)
