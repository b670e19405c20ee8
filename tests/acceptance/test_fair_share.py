"""Acceptance: fair share with real daemons. A project's long backlog does not hold up
another project's first videos (DESIGN §2, issue 17)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import psycopg

from tests import support
from tests.acceptance.conftest import Daemon
from tests.conftest import S3Endpoint, textured_jpeg

BACKLOG = 100


def test_a_small_project_finishes_before_a_big_backlog_is_a_quarter_done(
    conn: psycopg.Connection[Any], s3: S3Endpoint, start_daemon: Callable[..., Daemon]
) -> None:
    uris = [s3.put(f"fair/{i}.jpg", textured_jpeg(i)) for i in range(4)]
    # Small batches: a daemon buffers two batches of frames ahead, and a buffer of dozens
    # of one-frame jobs would be claimed before B exists, whatever the claim's order.
    settings = {
        "ARGUS_BATCH_SIZE": "2",
        "ARGUS_DECODE_PROCESSES": "0",
        "ARGUS_RECONCILE_INTERVAL": "0",
    }
    daemons = [start_daemon(**settings), start_daemon(**settings)]
    for daemon in daemons:
        daemon.wait_ready()

    with conn.transaction():  # project A's whole upload arrives at once
        for n in range(BACKLOG):
            support.add_video(conn, f"a-{n:03d}", [uris[n % 4]], project_id="A")
    support.wait_for(
        lambda: _count(conn, "A", "running") + _count(conn, "A", "succeeded") > 0,
        60,
        "A's backlog to start",
    )
    for n in range(2):
        support.add_video(conn, f"b-{n}", uris[:2], project_id="B")

    support.wait_for(lambda: _count(conn, "B", "succeeded") == 2, 120, "B's two jobs to finish")
    row = conn.execute(
        "SELECT count(*) AS n FROM argus.embedding_jobs a WHERE a.project_id = 'A' "
        "AND a.finished_at <= (SELECT max(finished_at) FROM argus.embedding_jobs "
        "WHERE project_id = 'B')"
    ).fetchone()
    assert row is not None
    print(f"A's jobs finished when B's two were done: {row['n']} of {BACKLOG}")
    assert row["n"] < BACKLOG // 4

    # Taking turns starves nobody: A's backlog finishes too, every frame once.
    support.wait_for(lambda: _count(conn, "A", "succeeded") == BACKLOG, 300, "A's backlog")
    embedded = conn.execute(
        "SELECT count(*) AS n, count(DISTINCT e.frame_id) AS frames "
        "FROM argus.frame_embeddings e JOIN argus.frames f ON f.id = e.frame_id "
        "WHERE e.embedding IS NOT NULL"
    ).fetchone()
    assert embedded is not None and embedded["n"] == embedded["frames"] == BACKLOG + 4
    for daemon in daemons:
        daemon.signal(signal.SIGTERM)
    for daemon in daemons:
        assert daemon.wait() == 0, daemon.log()


def _count(conn: psycopg.Connection[Any], project: str, status: str) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM argus.embedding_jobs WHERE project_id = %s AND status = %s",
        (project, status),
    ).fetchone()
    assert row is not None
    return int(row["n"])
