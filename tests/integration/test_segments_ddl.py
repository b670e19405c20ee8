"""Writers never wait on DDL (DESIGN §2, issue 18): a reader holding a transaction open
on argus.frame_embeddings delays no write, whether the write's segment was created ahead
by the indexer service or has to be created by the write itself."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from argus_embedder import db
from argus_embedder.gateways import index
from argus_embedder.pipeline import embedder, worker
from tests import support
from tests.conftest import S3Endpoint, textured_jpeg

READER_HOLDS = 30.0  # seconds the reader would keep its transaction open


@pytest.fixture(scope="module")
def tiny_embedder(tiny_siglip_dir: Path) -> embedder.Embedder:
    return embedder.load_embedder(str(tiny_siglip_dir), "cpu", batch_size=8)


def add_video(conn: psycopg.Connection[Any], s3: S3Endpoint, video: str, count: int) -> int:
    uris = [s3.put(f"{video}/{i}.jpg", textured_jpeg(i)) for i in range(count)]
    job_id = support.add_video(conn, video, uris)
    assert job_id is not None
    return job_id


@pytest.mark.parametrize("precreated", [False, True], ids=["created-by-the-write", "precreated"])
def test_a_reader_holding_a_transaction_open_delays_no_write_into_a_new_segment(
    conn: psycopg.Connection[Any],
    database_url: str,
    s3: S3Endpoint,
    tiny_embedder: embedder.Embedder,
    precreated: bool,
) -> None:
    model = tiny_embedder.model
    index.register(conn, model, tiny_embedder.dimension, "hnsw", segment_rows=20)
    config = support.worker_settings(
        database_url, s3.bucket, s3.url, model, batch_size=8, reconcile_interval=0
    )
    first = add_video(conn, s3, "before", 5)  # frame ids 1..5: segment [0, 20)
    with worker.Worker(config, database_url, tiny_embedder) as loop:
        loop.run(burst=True)
    assert support.job(conn, first)["status"] == "succeeded"

    # A slow status count: its transaction holds ACCESS SHARE on the table, the
    # model's partition and every segment until it ends.
    reader = db.connect(database_url)
    reader.execute("SELECT count(*) FROM argus.frame_embeddings").fetchone()
    released_at: float | None = None
    try:
        second = add_video(conn, s3, "after", 15)  # ids 6..20: segments [0, 20), [20, 40)
        if precreated:
            assert index.precreate(conn, model) == [20, 40, 60]  # what the service does
        finished = threading.Event()
        failures: list[BaseException] = []

        def run_job() -> None:
            try:
                with worker.Worker(config, database_url, tiny_embedder) as loop:
                    loop.run(burst=True)
            except BaseException as error:  # reported by the test thread
                failures.append(error)
            finally:
                finished.set()

        started = time.monotonic()
        thread = threading.Thread(target=run_job)
        thread.start()
        # Before the fix the write's CREATE TABLE ... PARTITION OF queued behind the
        # reader until it let go (READER_HOLDS), so the job could not end before.
        ended = finished.wait(READER_HOLDS)
        took = time.monotonic() - started
    finally:
        reader.rollback()
        released_at = time.monotonic()
        reader.close()
    thread.join(timeout=60)
    assert not failures, failures
    assert ended, f"the job waited for the reader ({took:.1f}s)"
    assert took < released_at - started
    job = support.job(conn, second)
    assert job["status"] == "succeeded" and job["frames_done"] == 15
    segments = conn.execute(
        "SELECT lower_bound FROM argus.segments WHERE model = %s ORDER BY lower_bound", (model,)
    ).fetchall()
    assert [row["lower_bound"] for row in segments][:2] == [0, 20]
    print(f"precreated={precreated}: job took {took:.2f}s with the reader holding its lock")


def test_precreate_attaches_segments_ahead_of_the_newest_frame(
    conn: psycopg.Connection[Any],
) -> None:
    model = index.register(conn, "test/ahead", 4, "hnsw", segment_rows=100)
    assert index.precreate(conn, model.model) == [0, 100, 200]  # no frames yet: id 0
    support.add_video(conn, "v", [f"s3://b/{i}" for i in range(150)], enqueue=False)
    assert index.precreate(conn, model.model) == [300]  # newest id 150: 100, 200, 300
    assert index.precreate(conn, model.model) == []
    attached = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass "
        "ORDER BY c.relname",
        (f"argus.{model.partition_name}",),
    ).fetchall()
    assert sorted(row["bound"] for row in attached) == [
        f"FOR VALUES FROM ('{lower}') TO ('{lower + 100}')" for lower in (0, 100, 200, 300)
    ]


def test_a_segment_that_cannot_be_locked_is_a_quick_transient_error(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    """The write path's fallback never stalls: when the model's partition is locked
    against an attach (here by an operator's explicit lock), it gives up after its
    lock_timeout with a LockNotAvailable (an OperationalError: the worker releases its
    jobs and retries), and succeeds once the lock is gone."""
    model = index.register(conn, "test/locked", 4, "hnsw", segment_rows=100)
    support.add_video(conn, "v", [f"s3://b/{i}" for i in range(5)], enqueue=False)
    with db.connect(database_url) as holder:
        holder.execute(f"LOCK TABLE argus.{model.partition_name} IN SHARE UPDATE EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            index.Segments(model).ensure(conn, [1, 2])
        assert time.monotonic() - started < 20
        holder.rollback()
    index.Segments(model).ensure(conn, [1, 2])
    assert conn.execute(
        "SELECT count(*) AS n FROM argus.segments WHERE model = %s", (model.model,)
    ).fetchone() == {"n": 1}
