"""Scenario 7: racing enqueues from many connections, cancel during processing, retry of
a failed job, and daemons migrating and starting concurrently on a fresh database."""

from __future__ import annotations

import random
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from argus_embedder import cli, db
from argus_embedder.gateways import queue
from tests import support
from tests.conftest import S3Endpoint, textured_jpeg
from tests.faults import harness, invariants
from tests.faults.conftest import add_videos, all_final, job_counts
from tests.faults.proxy import FaultProxy


def storm(database_url: str, videos: list[str], threads: int, each: int) -> list[str]:
    """`threads` connections enqueue `each` times at random over `videos`, half with the
    frame stage's plain INSERT, half through argus.enqueue_embedding_job. Returns errors."""
    problems: list[str] = []
    barrier = threading.Barrier(threads)

    def enqueue(seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(database_url, autocommit=True) as connection:
            barrier.wait()
            for _ in range(each):
                video = rng.choice(videos)
                try:
                    if rng.random() < 0.5:
                        connection.execute(
                            "INSERT INTO argus.embedding_jobs (video_id) VALUES (%s) "
                            "ON CONFLICT DO NOTHING",
                            (video,),
                        )
                    else:
                        connection.execute(
                            "SELECT argus.enqueue_embedding_job(%s, model => NULL, priority => 0)",
                            (video,),
                        )
                except psycopg.Error as error:
                    problems.append(f"{type(error).__name__}: {error}")

    workers = [threading.Thread(target=enqueue, args=(seed,)) for seed in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    return problems


def test_racing_enqueues_are_absorbed_while_daemons_work(
    audited: psycopg.Connection[Any], s3: S3Endpoint, fleet: harness.Fleet, database_url: str
) -> None:
    videos = add_videos(audited, s3, 6, 10, enqueue=False)
    for _ in range(2):
        fleet.start()
    for daemon in fleet.daemons:
        daemon.wait_ready()
    problems = storm(database_url, videos, threads=12, each=30)
    assert problems == []
    harness.wait_for(lambda: all_final(audited), 90, "every job to finish", step=0.2)
    figures = invariants.check_invariants(audited, daemons=fleet.live())
    assert figures.frames == figures.embedded == 60
    assert figures.statuses.get("failed", 0) == 0
    fleet.drain()
    invariants.report(
        figures,
        "racing-enqueues",
        enqueues=12 * 30,
        connections=12,
        jobs_created=figures.jobs,
        absorbed=12 * 30 - figures.jobs,
    )


def test_cancel_mid_job_and_retry_of_a_failed_and_a_cancelled_job(
    audited: psycopg.Connection[Any],
    s3: S3Endpoint,
    fleet: harness.Fleet,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    proxy: FaultProxy,
) -> None:
    monkeypatch.setenv("ARGUS_DATABASE_URL", database_url)
    # A job that fails for good: its only attempt's worker died (an expired lease).
    (doomed,) = add_videos(audited, s3, 1, 6, prefix="doomed", enqueue=False)
    audited.execute(
        "INSERT INTO argus.embedding_jobs (video_id, status, attempts, max_attempts, worker_id,"
        " lease_token, lease_expires_at, started_at)"
        " VALUES (%s, 'running', 1, 1, 'dead-worker', gen_random_uuid(),"
        " now() - interval '1 hour', now())",
        (doomed,),
    )
    daemon = fleet.start(ARGUS_S3_ENDPOINT_URL=proxy.url).wait_ready()
    harness.wait_for(lambda: all_final(audited), 60, "the doomed job to fail")
    failed = support.job(audited, 1)
    assert failed["status"] == "failed" and "lease expired" in failed["last_error"]
    assert support.embeddings(audited, doomed) == []

    uris = [s3.put(f"long/{i}.jpg", textured_jpeg(i, (640, 360))) for i in range(10)]
    long_job = support.add_video(audited, "long", [uris[i % 10] for i in range(200)])
    assert long_job is not None
    harness.wait_for(
        lambda: support.job(audited, long_job)["frames_done"] >= 8, 60, "progress on the long job"
    )
    assert cli.main(["cancel", str(long_job)]) == 0
    assert f"job {long_job} cancelled" in capsys.readouterr().out

    def settled() -> bool:
        job = support.job(audited, long_job)
        return bool(job["frames_done"] == len(support.embeddings(audited, "long")))

    harness.wait_for(settled, 30, "the cancelled job's last write to settle")
    cancelled = support.job(audited, long_job)
    assert cancelled["status"] == "cancelled"
    assert 0 < cancelled["frames_done"] < 200
    harness.wait_for(
        lambda: daemon.metric("argus_embedder_jobs_completed_total", outcome="lease_lost") >= 1,
        30,
        "the daemon to drop the cancelled job",
    )
    written_at_cancel = len(support.embeddings(audited, "long"))

    assert cli.main(["retry", "1"]) == 0
    assert cli.main(["retry", str(long_job)]) == 0
    harness.wait_for(lambda: all_final(audited), 90, "the retried jobs to finish", step=0.2)
    retried = support.job(audited, 1)
    assert retried["status"] == "succeeded"
    assert any("lease expired" in entry["error"] for entry in retried["errors"])  # history kept
    resumed = support.job(audited, long_job)
    assert resumed["status"] == "succeeded" and resumed["frames_done"] == 200
    figures = invariants.check_invariants(audited, daemons=[daemon])
    assert figures.frames == figures.embedded == 206
    fleet.drain()
    invariants.report(
        figures,
        "cancel-and-retry",
        cancelled_at_frame=cancelled["frames_done"],
        rows_at_cancel=written_at_cancel,
        retried_jobs=2,
    )


MIGRATE_THEN_RUN = (
    "import sys\n"
    "from argus_embedder import cli\n"
    "code = cli.main(['migrate'])\n"
    "sys.exit(code or cli.main(['run']))\n"
)


@pytest.mark.slow
def test_daemons_migrating_and_starting_together_on_a_fresh_database(
    empty_database_url: str, s3: S3Endpoint, tiny_siglip_dir: Path, tmp_path: Path
) -> None:
    """Three daemons whose start-up runs `migrate` then `run` (ExecStartPre style), all at
    once against an empty database: one applies the migrations, all become ready."""
    fleet = harness.Fleet(
        harness.daemon_env(empty_database_url, tiny_siglip_dir, s3.url, s3.bucket), tmp_path
    )
    try:
        for _ in range(3):
            fleet.start(command=[sys.executable, "-c", MIGRATE_THEN_RUN])
        for daemon in fleet.daemons:
            daemon.wait_ready()
        logs = [daemon.log() for daemon in fleet.daemons]
        applied = [int(log.split(" migration(s) applied")[0].rsplit("(", 1)[1]) for log in logs]
        assert sorted(applied) == [0, 0, len(db.migrations())], logs
        with db.connect(empty_database_url, autocommit=True) as connection:
            invariants.install_write_audit(connection)
            add_videos(connection, s3, 6, 8)
            harness.wait_for(lambda: all_final(connection), 60, "every job to finish")
            models = connection.execute("SELECT model FROM argus.models").fetchall()
            assert [row["model"] for row in models] == [str(tiny_siglip_dir)]
            figures = invariants.check_invariants(connection, daemons=fleet.daemons)
            assert job_counts(connection) == {"succeeded": 6}
        fleet.drain()
    finally:
        fleet.stop_all()
    invariants.report(figures, "concurrent-migrate-and-start", daemons=3)


# --- the twin-job bug, at the queue level (deterministic) -------------------------------


def _requeue_then_enqueue(connection: psycopg.Connection[Any], video: str) -> None:
    """A claimed job goes back to queued (SIGTERM release), then the frame stage, which
    knows nothing of models, enqueues the video again, as DESIGN §2 tells it to."""
    support.add_video(connection, video, ["a.jpg"])
    worker = queue.Queue(model="m", worker_id="w", lease_seconds=30)
    (job,) = worker.claim(connection)
    assert worker.release(connection, job)
    queue.enqueue(connection, video, model=None, priority=0)


def test_one_queued_job_per_video_after_a_release_and_a_new_enqueue(
    conn: psycopg.Connection[Any],
) -> None:
    _requeue_then_enqueue(conn, "twin")
    queued = conn.execute(
        "SELECT count(*) AS n FROM argus.embedding_jobs WHERE video_id = 'twin' "
        "AND status = 'queued'"
    ).fetchone()
    assert queued is not None and queued["n"] == 1


def test_concurrent_claims_of_twin_jobs_never_raise(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    raised: list[str] = []
    for trial in range(10):
        _requeue_then_enqueue(conn, f"twin-{trial}")
        barrier = threading.Barrier(2)

        def claim(name: str, barrier: threading.Barrier = barrier) -> None:
            with db.connect(database_url, autocommit=True) as connection:
                barrier.wait()
                try:
                    queue.Queue(model="m", worker_id=name, lease_seconds=30).claim(connection)
                except psycopg.Error as error:
                    raised.append(type(error).__name__)

        threads = [threading.Thread(target=claim, args=(name,)) for name in ("x", "y")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        conn.execute(
            "UPDATE argus.embedding_jobs SET status = 'succeeded', lease_token = NULL, "
            "lease_expires_at = NULL, finished_at = now() WHERE status IN ('queued', 'running')"
        )
    assert raised == []
