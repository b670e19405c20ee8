"""Queue semantics against a real PostgreSQL: claim order, SKIP LOCKED, leases, fencing."""

from __future__ import annotations

import concurrent.futures
import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from argus_embedder import db
from argus_embedder.gateways import index, queue, store
from tests import support
from tests.conftest import S3Endpoint, textured_jpeg

MODEL = "test/model"
# Queued candidates come from a status-partial index: a lane's, or (NULL project) the old one.
# embedding_jobs_queued_run_at_idx (0016) holds queued jobs only, so it stays small too.
QUEUED_INDEX_SCAN = re.compile(r"Index Scan using embedding_jobs_(lane|claim|queued_run_at)_idx")


def make_queue(worker: str = "w1", lease: float = 60.0) -> queue.Queue:
    return queue.Queue(model=MODEL, worker_id=worker, lease_seconds=lease)


def expire(conn: psycopg.Connection[Any], job_id: int) -> None:
    conn.execute(
        "UPDATE argus.embedding_jobs SET lease_expires_at = now() - interval '1 hour' "
        "WHERE id = %s",
        (job_id,),
    )


def test_claim_order_is_priority_then_run_at(conn: psycopg.Connection[Any]) -> None:
    ids = {}
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5)]:
        ids[name] = support.add_video(conn, name, ["x"], priority=priority)
    conn.execute(
        "UPDATE argus.embedding_jobs SET run_at = now() - interval '1 hour' WHERE video_id = 'c'"
    )
    claimed = [make_queue().claim(conn)[0].video_id for _ in range(4)]
    assert claimed == ["b", "d", "c", "a"]
    assert make_queue().claim(conn) == []


def test_future_run_at_is_not_claimed(conn: psycopg.Connection[Any]) -> None:
    support.add_video(conn, "v", ["x"])
    conn.execute("UPDATE argus.embedding_jobs SET run_at = now() + interval '1 hour'")
    assert make_queue().claim(conn) == []


def test_eight_concurrent_claimers_never_share_a_job(database_url: str) -> None:
    with db.connect(database_url, autocommit=True) as conn:
        for index in range(200):
            support.add_video(conn, f"video-{index}", ["x"])

    def claim_all(worker: str) -> list[int]:
        got = []
        with db.connect(database_url, autocommit=True) as connection:
            q = make_queue(worker)
            while jobs := q.claim(connection, limit=3):
                got.extend(job.id for job in jobs)
        return got

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(claim_all, [f"w{i}" for i in range(8)]))
    claimed = [job_id for result in results for job_id in result]
    assert len(claimed) == 200
    assert len(set(claimed)) == 200
    assert sum(1 for result in results if result) >= 2  # the work really was shared


def test_expired_lease_is_reclaimed_and_counts_an_attempt(conn: psycopg.Connection[Any]) -> None:
    support.add_video(conn, "v", ["x"])
    first = make_queue("dead").claim(conn)[0]
    assert first.attempts == 1
    assert make_queue("other").claim(conn) == []  # lease still live
    expire(conn, first.id)
    second = make_queue("w2").claim(conn)[0]
    assert second.id == first.id
    assert second.attempts == 2
    assert second.lease_token != first.lease_token
    row = support.job(conn, first.id)
    assert row["worker_id"] == "w2"
    assert row["errors"][0]["error"] == "lease expired"
    assert row["errors"][0]["worker"] == "dead"


def test_stale_token_writes_nothing(conn: psycopg.Connection[Any]) -> None:
    support.add_video(conn, "v", ["x", "y"])
    stale = make_queue("old").claim(conn)[0]
    expire(conn, stale.id)
    fresh = make_queue("new").claim(conn)[0]
    frame_ids = [r["id"] for r in conn.execute("SELECT id FROM argus.frames ORDER BY id")]
    lost = store.write(
        conn,
        [store.JobWrite(stale, [store.FrameResult(frame_ids[0], error="x")])],
        preprocessing="p",
        lease_seconds=60,
    )
    assert lost.lost == {stale.claim}
    assert conn.execute("SELECT count(*) AS n FROM argus.frame_embeddings").fetchone()["n"] == 0
    assert make_queue("old").complete(conn, stale) is None
    assert make_queue("old").fail(conn, stale, "boom") is None
    assert support.job(conn, fresh.id)["status"] == "running"
    assert support.job(conn, fresh.id)["frames_done"] == 0


def test_missing_frames_lists_every_claimed_job_at_once_fenced(
    conn: psycopg.Connection[Any],
) -> None:
    for name, uris in {"a": ["a0", "a1", "a2"], "b": ["b0"], "c": ["c0", "c1"]}.items():
        support.add_video(conn, name, uris)
    jobs = {job.video_id: job for job in make_queue().claim(conn, limit=3)}
    # b's only frame already has a row (an earlier attempt wrote it); c's lease is lost.
    b_frame = conn.execute("SELECT id FROM argus.frames WHERE video_id = 'b'").fetchone()["id"]
    index.Segments(index.register(conn, MODEL, 4)).ensure(conn, [b_frame])
    store.write(
        conn,
        [store.JobWrite(jobs["b"], [store.FrameResult(b_frame, error="bad")])],
        preprocessing="p",
        lease_seconds=60,
    )
    expire(conn, jobs["c"].id)
    assert [job.video_id for job in make_queue("thief").claim(conn)] == ["c"]
    conn.execute("UPDATE argus.embedding_jobs SET frames_total = 99 WHERE video_id = 'c'")

    listed = make_queue().missing_frames(conn, list(jobs.values()))

    uris = {job_id: [frame.image_uri for frame in frames] for job_id, frames in listed.items()}
    assert uris == {jobs["a"].id: ["a0", "a1", "a2"], jobs["b"].id: []}
    assert support.job(conn, jobs["a"].id)["frames_total"] == 3
    assert support.job(conn, jobs["b"].id)["frames_total"] == 1  # one done, none missing
    assert support.job(conn, jobs["c"].id)["frames_total"] == 99  # the thief's, untouched


def test_failure_backs_off_then_fails_with_history(conn: psycopg.Connection[Any]) -> None:
    support.add_video(conn, "v", ["x"])
    conn.execute("UPDATE argus.embedding_jobs SET max_attempts = 3")
    q = make_queue()
    statuses = []
    for attempt in range(1, 4):
        job = q.claim(conn)[0]
        assert job.attempts == attempt
        statuses.append(q.fail(conn, job, f"boom {attempt}"))
        row = support.job(conn, job.id)
        if row["status"] == "queued":
            delay = conn.execute(
                "SELECT extract(epoch FROM run_at - now()) AS s FROM argus.embedding_jobs"
            ).fetchone()["s"]
            assert 0 < float(delay) <= queue.MAX_BACKOFF_SECONDS
            assert q.claim(conn) == []  # backoff: not claimable yet
            conn.execute("UPDATE argus.embedding_jobs SET run_at = now()")
    assert statuses == ["queued", "queued", "failed"]
    row = support.job(conn, job.id)
    assert row["status"] == "failed"
    assert row["last_error"] == "boom 3"
    assert [entry["error"] for entry in row["errors"]] == ["boom 1", "boom 2", "boom 3"]
    assert [entry["attempt"] for entry in row["errors"]] == [1, 2, 3]
    assert row["finished_at"] is not None


def test_backoff_grows_exponentially() -> None:
    assert 1.0 <= queue.backoff_seconds(1) <= 2.0
    assert 8.0 <= queue.backoff_seconds(4) <= 16.0
    assert queue.backoff_seconds(50) <= queue.MAX_BACKOFF_SECONDS


def test_expired_lease_past_max_attempts_fails(conn: psycopg.Connection[Any]) -> None:
    support.add_video(conn, "v", ["x"])
    conn.execute("UPDATE argus.embedding_jobs SET max_attempts = 1")
    job = make_queue("crashing").claim(conn)[0]
    expire(conn, job.id)
    assert make_queue("w2").claim(conn) == []
    row = support.job(conn, job.id)
    assert row["status"] == "failed"
    assert "lease expired" in row["last_error"]
    assert len(row["errors"]) == 1


def test_duplicate_enqueues_are_absorbed(conn: psycopg.Connection[Any]) -> None:
    support.add_video(conn, "v", ["x"], enqueue=False)
    first = queue.enqueue(conn, "v", model=None, priority=0)
    assert first is not None
    assert queue.enqueue(conn, "v", model=None, priority=0) is None
    conn.execute("INSERT INTO argus.embedding_jobs (video_id) VALUES ('v') ON CONFLICT DO NOTHING")
    count = conn.execute("SELECT count(*) AS n FROM argus.embedding_jobs").fetchone()["n"]
    assert count == 1


def test_no_two_running_jobs_for_one_video(conn: psycopg.Connection[Any]) -> None:
    support.add_video(conn, "v", ["x"])
    running = make_queue("w1").claim(conn)[0]
    # Frames arrive later and the frame stage enqueues again: a second job waits.
    assert queue.enqueue(conn, "v", model=None, priority=0) is not None
    assert make_queue("w2").claim(conn) == []
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "UPDATE argus.embedding_jobs SET status = 'running', model = %s "
            "WHERE status = 'queued'",
            (MODEL,),
        )
    make_queue("w1").complete(conn, running)
    follow_up = make_queue("w2").claim(conn)
    assert len(follow_up) == 1 and follow_up[0].id != running.id


def test_release_keeps_the_attempt_and_absorbs_a_queued_duplicate(
    conn: psycopg.Connection[Any],
) -> None:
    support.add_video(conn, "v", ["x"])
    job = make_queue().claim(conn)[0]
    duplicate = queue.enqueue(conn, "v", model=None, priority=0)
    assert make_queue().release(conn, job)
    row = support.job(conn, job.id)
    assert row["status"] == "queued" and row["attempts"] == 0
    assert support.job(conn, duplicate)["status"] == "cancelled"  # type: ignore[arg-type]


def test_cancel_and_retry(conn: psycopg.Connection[Any]) -> None:
    support.add_video(conn, "v", ["x"])
    job = make_queue().claim(conn)[0]
    assert queue.cancel(conn, job.id)
    assert make_queue().renew(conn, [job]) == set()
    assert queue.job_status(conn, job.id) == "cancelled"
    assert not queue.cancel(conn, job.id)
    assert queue.retry(conn, job.id)
    again = make_queue().claim(conn)[0]
    assert again.id == job.id and again.attempts == 1


def test_heartbeat_renewal_reports_lost_leases(conn: psycopg.Connection[Any]) -> None:
    support.add_video(conn, "a", ["x"])
    support.add_video(conn, "b", ["x"])
    q = make_queue(lease=5)
    jobs = q.claim(conn, limit=2)
    before = conn.execute("SELECT max(lease_expires_at) AS t FROM argus.embedding_jobs").fetchone()[
        "t"
    ]
    time.sleep(0.05)
    queue.cancel(conn, jobs[1].id)
    assert q.renew(conn, jobs) == {jobs[0].claim}
    after = support.job(conn, jobs[0].id)["lease_expires_at"]
    assert after > before


def test_claim_stays_an_index_scan_with_a_million_finished_jobs(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute(
        "INSERT INTO argus.embedding_jobs (video_id, model, status, finished_at) "
        "SELECT 'old-' || g, %s, 'succeeded', now() FROM generate_series(1, 1000000) g",
        (MODEL,),
    )
    support.add_video(conn, "fresh", ["x"])
    conn.execute("ANALYZE argus.embedding_jobs")
    plan = support.claim_plans(conn, make_queue())
    assert "Seq Scan on embedding_jobs" not in plan, plan
    # Candidates come only from the status-partial indexes, in claim order.
    assert QUEUED_INDEX_SCAN.search(plan), plan
    started = time.perf_counter()
    job = make_queue().claim(conn)[0]
    elapsed = time.perf_counter() - started
    assert job.video_id == "fresh"
    print(f"claim with 1M finished jobs: {elapsed * 1000:.1f} ms")


def test_claim_with_a_large_backlog_reads_the_claim_index_in_order(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute(
        "INSERT INTO argus.embedding_jobs (video_id, priority, run_at) "
        "SELECT 'backlog-' || g, g % 3, now() - (g || ' seconds')::interval "
        "FROM generate_series(1, 200000) g"
    )
    conn.execute("ANALYZE argus.embedding_jobs")
    plan = support.claim_plans(conn, make_queue(), limit=4)
    assert "Seq Scan on embedding_jobs" not in plan, plan
    assert QUEUED_INDEX_SCAN.search(plan), plan
    started = time.perf_counter()
    jobs = make_queue().claim(conn, limit=4)
    elapsed = time.perf_counter() - started
    # Highest priority (2) first, oldest run_at first within it.
    assert [job.video_id for job in jobs] == [
        "backlog-200000",
        "backlog-199997",
        "backlog-199994",
        "backlog-199991",
    ]
    print(f"claim with a 200k backlog: {elapsed * 1000:.1f} ms")


def test_complete_many_is_fenced_per_job(conn: psycopg.Connection[Any]) -> None:
    for name in "abc":
        support.add_video(conn, name, ["x"])
    q = make_queue()
    jobs = q.claim(conn, limit=3)
    assert len(jobs) == 3
    queue.cancel(conn, jobs[1].id)
    assert q.complete_many(conn, jobs) == {jobs[0].id, jobs[2].id}
    assert [support.job(conn, job.id)["status"] for job in jobs] == [
        "succeeded",
        "cancelled",
        "succeeded",
    ]


def test_failing_for_good_leaves_a_queued_duplicate_queued_regression_bug2(
    conn: psycopg.Connection[Any],
) -> None:
    """Regression (issue 16 bug 2): new frames arrive while a job on its last attempt
    runs; when it fails for good, the duplicate queued for them must still run."""
    support.add_video(conn, "v", ["x"])
    conn.execute("UPDATE argus.embedding_jobs SET max_attempts = 1")
    job = make_queue().claim(conn)[0]
    support.add_video(conn, "v", ["y"], first_index=1, enqueue=False)
    duplicate = queue.enqueue(conn, "v", model=None, priority=0)
    assert duplicate is not None
    assert make_queue().fail(conn, job, "boom") == "failed"
    assert support.job(conn, duplicate)["status"] == "queued"
    assert [claimed.id for claimed in make_queue().claim(conn)] == [duplicate]


@pytest.mark.parametrize("ending", ["fail", "release"])
def test_requeued_job_carries_the_absorbed_priority_regression_bug2(
    conn: psycopg.Connection[Any], ending: str
) -> None:
    """Regression (issue 16 bug 2): a job that absorbs a queued duplicate takes the
    higher priority of the two."""
    support.add_video(conn, "v", ["x"], priority=1)
    job = make_queue().claim(conn)[0]
    duplicate = queue.enqueue(conn, "v", model=None, priority=7)
    if ending == "fail":
        assert make_queue().fail(conn, job, "boom") == "queued"
    else:
        assert make_queue().release(conn, job)
    assert support.job(conn, duplicate)["status"] == "cancelled"  # type: ignore[arg-type]
    row = support.job(conn, job.id)
    assert (row["status"], row["priority"]) == ("queued", 7)


@pytest.mark.parametrize("ending", ["fail", "release"])
def test_an_enqueue_racing_a_requeue_is_absorbed_regression_bug6(
    database_url: str,
    conn: psycopg.Connection[Any],
    ending: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (issue 16 bug 6): the frame stage enqueues (and commits) between the
    absorb and the statement that sets the job back to queued; the job still goes back,
    absorbing the new duplicate, instead of raising UniqueViolation."""
    support.add_video(conn, "v", ["x"])
    job = make_queue().claim(conn)[0]
    absorb = queue.Queue._absorb_duplicate
    raced: list[int | None] = []

    def absorb_then_enqueue(self: queue.Queue, *args: Any, **kwargs: Any) -> None:
        absorb(self, *args, **kwargs)
        if not raced:
            with db.connect(database_url, autocommit=True) as frame_stage:
                raced.append(queue.enqueue(frame_stage, "v", model=None, priority=3))

    monkeypatch.setattr(queue.Queue, "_absorb_duplicate", absorb_then_enqueue)
    if ending == "fail":
        assert make_queue().fail(conn, job, "boom") == "queued"
    else:
        assert make_queue().release(conn, job)
    assert raced[0] is not None
    assert support.job(conn, raced[0])["status"] == "cancelled"
    row = support.job(conn, job.id)
    assert (row["status"], row["priority"]) == ("queued", 3)


def test_claim_skips_past_an_exhausted_expired_job_regression_bug8(
    conn: psycopg.Connection[Any],
) -> None:
    """Regression (issue 16 bug 8): an empty claim means nothing is claimable, even when
    the first job in line was an expired one out of attempts (it becomes failed)."""
    support.add_video(conn, "crashed", ["x"])
    conn.execute("UPDATE argus.embedding_jobs SET max_attempts = 1")
    dead = make_queue("dead").claim(conn)[0]
    expire(conn, dead.id)
    waiting = support.add_video(conn, "waiting", ["x"])
    assert [job.id for job in make_queue().claim(conn, limit=1)] == [waiting]
    assert support.job(conn, dead.id)["status"] == "failed"
    assert make_queue().claim(conn, limit=1) == []


def test_burst_run_leaves_no_work_behind_an_exhausted_expired_job_regression_bug8(
    conn: psycopg.Connection[Any], s3: S3Endpoint, tiny_siglip_dir: Path
) -> None:
    """Regression (issue 16 bug 8): `run --burst` ran until an empty claim, and its first
    claim (limit 1) only moved an exhausted expired job to failed: it exited at once."""
    from argus_embedder.pipeline import embedder, worker

    model = embedder.load_embedder(str(tiny_siglip_dir), "cpu", batch_size=8)
    support.add_video(conn, "crashed", [s3.put("crashed/0.jpg", textured_jpeg(1))])
    conn.execute("UPDATE argus.embedding_jobs SET max_attempts = 1")
    dead = queue.Queue(model=model.model, worker_id="dead", lease_seconds=60).claim(conn)[0]
    expire(conn, dead.id)
    waiting = support.add_video(conn, "waiting", [s3.put("waiting/0.jpg", textured_jpeg(2))])
    assert waiting is not None
    config = support.worker_settings(conn.info.dsn, s3.bucket, s3.url, model.model, batch_size=8)
    with worker.Worker(config, conn.info.dsn, model) as loop:
        loop.run(burst=True)
    assert support.job(conn, waiting)["status"] == "succeeded"
    assert support.job(conn, dead.id)["status"] == "failed"


def test_backoff_is_bounded_at_any_attempt_regression_bug5() -> None:
    """Regression (issue 16 bug 5): 2 ** 1024 overflowed a float at attempt 1025."""
    for attempt in (60, 1025, 10**9):
        backoff = queue.backoff_seconds(attempt)
        assert queue.MAX_BACKOFF_SECONDS / 2 <= backoff <= queue.MAX_BACKOFF_SECONDS


def test_error_history_keeps_the_newest_entries_and_counts_all_regression_bug5(
    conn: psycopg.Connection[Any],
) -> None:
    """Regression (issue 16 bug 5): a job failing forever (transient faults give their
    attempt back; leases expiring) grew its `errors` history without end. Both paths that
    append keep the newest 20 and count them all; the backoff reads the count."""
    support.add_video(conn, "v", ["x"])
    conn.execute("UPDATE argus.embedding_jobs SET max_attempts = 50")
    conn.execute("SET ROLE argus_worker")  # the daemon's privileges, new function included
    q = make_queue()
    for failure in range(1, 13):
        q.fail(conn, q.claim(conn)[0], f"boom {failure}", transient=True)
        conn.execute("UPDATE argus.embedding_jobs SET run_at = now()")
    for _ in range(12):
        expire(conn, q.claim(conn)[0].id)  # the next claim reclaims it: "lease expired"
    job = q.claim(conn)[0]
    row = support.job(conn, job.id)
    assert len(row["errors"]) == 20
    assert row["errors_total"] == job.failures == 24
    assert [entry["error"] for entry in row["errors"][:10]] == [
        *(f"boom {failure}" for failure in range(5, 13)),
        "lease expired",
        "lease expired",
    ]
    assert row["errors"][-1]["attempt"] == 12


def test_error_count_migration_counts_existing_histories(empty_database_url: str) -> None:
    """0004 sets errors_total from the history of the jobs already there."""
    with psycopg.connect(
        empty_database_url, autocommit=True, row_factory=psycopg.rows.dict_row
    ) as connection:
        connection.execute(db.queries()["migrations_bootstrap"])
        for migration in db.migrations():
            if migration.version == 4:
                connection.execute(
                    "INSERT INTO argus.embedding_jobs (video_id, errors) VALUES "
                    """('a', '[]'), ('b', '[{"error": "x"}, {"error": "y"}]')"""
                )
            with connection.transaction():
                connection.execute(migration.sql.encode())
        totals = connection.execute(
            "SELECT video_id, errors_total FROM argus.embedding_jobs ORDER BY video_id"
        ).fetchall()
    assert [(row["video_id"], row["errors_total"]) for row in totals] == [("a", 0), ("b", 2)]
