"""Acceptance: real daemons, real PostgreSQL, real S3; NOTIFY, SIGTERM and SIGKILL."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests import support
from tests.acceptance.conftest import Daemon
from tests.conftest import S3Endpoint, textured_jpeg


def upload(
    s3: S3Endpoint, video_id: str, count: int, size: tuple[int, int] = (160, 90)
) -> list[str]:
    return [s3.put(f"{video_id}/{i:05d}.jpg", textured_jpeg(i, size)) for i in range(count)]


def assert_each_frame_embedded_once(
    conn: psycopg.Connection[Any], video_id: str, count: int
) -> None:
    rows = support.embeddings(conn, video_id)
    assert len(rows) == count
    assert len({row["frame_id"] for row in rows}) == count
    assert all(row["embedding"] is not None for row in rows)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    found: list[int] = []
    waiting = [pid]
    while waiting:
        parent = waiting.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = (task / "children").read_text().split()
            found += map(int, children)
            waiting += map(int, children)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_notify_wakes_an_idle_daemon_within_a_second(
    conn: psycopg.Connection[Any], s3: S3Endpoint, start_daemon: Callable[..., Daemon]
) -> None:
    uris = upload(s3, "notify", 3)
    daemon = start_daemon(ARGUS_POLL_INTERVAL="60")  # only NOTIFY can wake it in time
    daemon.wait_ready()
    assert daemon.get("/livez")[0] == 200
    status, body = daemon.get("/metrics")
    assert status == 200 and "argus_embedder_ready 1.0" in body

    support.add_video(conn, "notify", uris, enqueue=False)
    conn.execute("INSERT INTO argus.embedding_jobs (video_id) VALUES ('notify')")
    support.wait_for(
        lambda: support.job(conn, 1)["started_at"] is not None, 5, "the job to be claimed"
    )
    job = support.job(conn, 1)
    latency = (job["started_at"] - job["created_at"]).total_seconds()
    print(f"NOTIFY → claim latency: {latency * 1000:.0f} ms")
    assert latency < 1.0
    support.wait_for(lambda: support.job(conn, 1)["status"] == "succeeded", 30, "the job to finish")

    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    _, body = daemon.get("/metrics") if daemon.process.poll() is None else (0, "")


def test_sigterm_mid_job_exits_0_and_a_second_daemon_finishes(
    conn: psycopg.Connection[Any], s3: S3Endpoint, start_daemon: Callable[..., Daemon]
) -> None:
    count = 240
    uris = upload(s3, "long", count, size=(640, 360))
    job_id = support.add_video(conn, "long", uris)
    first = start_daemon(ARGUS_BATCH_SIZE="4")
    support.wait_for(lambda: support.job(conn, job_id)["frames_done"] >= 8, 90, "progress")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.log()
    job = support.job(conn, job_id)
    assert job["status"] == "queued", first.log()
    assert job["attempts"] == 0  # the lease was given back without burning an attempt
    assert 0 < job["frames_done"] < count

    second = start_daemon("--burst", ARGUS_BATCH_SIZE="16")
    assert second.wait(timeout=180) == 0, second.log()
    job = support.job(conn, job_id)
    assert job["status"] == "succeeded"
    assert (job["frames_total"], job["frames_done"], job["frames_failed"]) == (count, count, 0)
    assert_each_frame_embedded_once(conn, "long", count)


def test_sigkill_mid_job_is_reclaimed_after_lease_expiry(
    conn: psycopg.Connection[Any], s3: S3Endpoint, start_daemon: Callable[..., Daemon]
) -> None:
    count = 240
    uris = upload(s3, "killed", count, size=(640, 360))
    job_id = support.add_video(conn, "killed", uris)
    first = start_daemon(ARGUS_BATCH_SIZE="4", ARGUS_LEASE_SECONDS="3")
    support.wait_for(lambda: support.job(conn, job_id)["frames_done"] >= 8, 90, "progress")
    helpers = descendants(first.process.pid)
    # Decode processes and their forkserver (none on a one-core host, which uses threads).
    assert len(helpers) >= 2 or len(os.sched_getaffinity(0)) == 1, helpers
    first.signal(signal.SIGKILL)
    first.wait()
    # Its decode processes leave with it: no orphans holding memory after a crash.
    support.wait_for(lambda: not any(alive(pid) for pid in helpers), 15, "no orphans")
    assert support.job(conn, job_id)["status"] == "running"  # nobody released it
    # Reclaimable once the lease expired plus the crash backoff (2^attempts s).
    support.wait_for(
        lambda: conn.execute(
            "SELECT lease_expires_at + interval '2 seconds' < now() AS due "
            "FROM argus.embedding_jobs WHERE id = %s",
            (job_id,),
        ).fetchone()["due"],
        30,
        "the lease and its backoff to pass",
    )

    second = start_daemon("--burst", ARGUS_BATCH_SIZE="16", ARGUS_LEASE_SECONDS="3")
    assert second.wait(timeout=180) == 0, second.log()
    job = support.job(conn, job_id)
    assert job["status"] == "succeeded", second.log()
    assert job["attempts"] == 2
    assert job["errors"][0]["error"] == "lease expired"
    assert (job["frames_total"], job["frames_done"]) == (count, count)
    assert_each_frame_embedded_once(conn, "killed", count)
