"""Helpers shared by the integration and acceptance tests."""

from __future__ import annotations

from typing import Any

import psycopg

from argus_embedder import frames, queue


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
