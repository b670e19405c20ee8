"""Regressions of issue 16 on the worker's write path, claims, wake-ups and lease keeper.

Each test drives a real Worker over a real database and S3 endpoint with a stand-in
embedder (a deterministic unit vector per image, with hooks), so it runs in seconds
and can place a fault at an exact point of the stream.
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import pytest

from argus_embedder import db
from argus_embedder.gateways import index, queue, store
from argus_embedder.pipeline import inference, worker
from argus_embedder.runtime import health
from tests import support
from tests.conftest import S3Endpoint

MODEL = "stand-in/model"
HUGE_FRAME_ID = 2**63 - 800


class StandIn:
    """An embedder stand-in: images are their own bytes; `on_embed` runs before each batch."""

    model = MODEL
    dimension = 8
    preprocessing = "stand-in"
    recipe: Any = None

    def __init__(self, batch_size: int = 8) -> None:
        self.batch_size = batch_size
        self.batches: list[list[bytes]] = []
        self.not_finite: set[bytes] = set()
        self.on_embed: Callable[[int], None] | None = None

    def prepare(self, data: bytes) -> bytes:
        return data

    def embed(self, images: Sequence[bytes]) -> npt.NDArray[np.float32]:
        self.batches.append(list(images))
        if self.on_embed is not None:
            self.on_embed(len(self.batches))
        rows = []
        for data in images:
            vector = np.random.default_rng(zlib.crc32(data)).normal(size=self.dimension)
            vector = (vector / np.linalg.norm(vector)).astype(np.float32)
            if data in self.not_finite:
                vector[0] = np.nan  # as a half-precision overflow on a GPU can give
            rows.append(vector)
        return np.stack(rows)


def image(video: str, index: int) -> bytes:
    return f"{video}/{index}".encode()


def add_video(conn: psycopg.Connection[Any], s3: S3Endpoint, video: str, frames: int) -> int:
    uris = [s3.put(f"{video}/{i}", image(video, i)) for i in range(frames)]
    job_id = support.add_video(conn, video, uris)
    assert job_id is not None
    return job_id


def make_worker(
    conn: psycopg.Connection[Any],
    s3: S3Endpoint,
    embedder: StandIn,
    *,
    shutdown: threading.Event | None = None,
    **extra: Any,
) -> worker.Worker:
    config = support.worker_settings(
        conn.info.dsn, s3.bucket, s3.url, MODEL, batch_size=embedder.batch_size, **extra
    )
    return worker.Worker(
        config,
        conn.info.dsn,
        embedder,  # type: ignore[arg-type]
        shutdown=shutdown,
        threads=4,
    )


def rows_per_frame(conn: psycopg.Connection[Any], video: str) -> dict[int, int]:
    rows = conn.execute(
        "SELECT f.frame_index, count(e.frame_id) AS n FROM argus.frames f "
        "LEFT JOIN argus.frame_embeddings e ON e.frame_id = f.id AND e.model = %s "
        "WHERE f.video_id = %s GROUP BY f.frame_index ORDER BY f.frame_index",
        (MODEL, video),
    ).fetchall()
    return {row["frame_index"]: row["n"] for row in rows}


# --- bug 1: a write error never crash-loops the daemon --------------------------------


def test_regression_bug1_non_finite_vector_becomes_that_frames_error_row(
    conn: psycopg.Connection[Any], s3: S3Endpoint
) -> None:
    """Regression (issue 16 bug 1): a NaN vector is never stored; its frame fails alone."""
    job_id = add_video(conn, s3, "nan", 6)
    embedder = StandIn()
    embedder.not_finite.add(image("nan", 2))
    with make_worker(conn, s3, embedder) as loop:
        loop.run(burst=True)
    job = support.job(conn, job_id)
    assert (job["status"], job["frames_done"], job["frames_failed"]) == ("succeeded", 6, 1)
    rows = {row["frame_index"]: row for row in support.embeddings(conn, "nan")}
    assert rows[2]["embedding"] is None and "non-finite" in rows[2]["error"]
    assert all(rows[i]["embedding"] is not None for i in (0, 1, 3, 4, 5))


def insert_frame_with_id(
    conn: psycopg.Connection[Any], s3: S3Endpoint, video: str, frame_id: int, index: int
) -> None:
    """What the frame stage's role could do before bug 11's fix: choose the frame id."""
    uri = s3.put(f"{video}/{index}", image(video, index))
    conn.execute(
        "INSERT INTO argus.frames (id, video_id, frame_index, image_uri) "
        "OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s)",
        (frame_id, video, index, uri),
    )


def assert_failed_with_attempt(job: dict[str, Any], naming: str) -> None:
    # Failed once, its attempt counted (a release would give it back: attempts 0),
    # queued again with backoff until its attempts are used up.
    assert (job["status"], job["attempts"]) == ("queued", 1), job
    assert naming in job["last_error"], job["last_error"]


@pytest.mark.parametrize("frame_id", [HUGE_FRAME_ID, -5], ids=["huge-id", "negative-id"])
def test_regression_bug1_a_frame_id_the_write_rejects_fails_only_its_job(
    conn: psycopg.Connection[Any], s3: S3Endpoint, frame_id: int
) -> None:
    """Regression (issue 16 bug 1): `bigint out of range` (segment of a huge id) and
    `no partition … found for row` (a negative id) fail the job with its attempt
    counted; the batch-mate job is written; the worker keeps running."""
    good = add_video(conn, s3, "good", 3)
    bad = add_video(conn, s3, "bad", 2)
    try:
        insert_frame_with_id(conn, s3, "bad", frame_id, 2)
    except psycopg.errors.IntegrityError:
        pytest.skip("the schema now rejects this frame id (issue 16 bug 11)")
    embedder = StandIn()
    with make_worker(conn, s3, embedder) as loop:
        loop.run(burst=True)
        assert any(
            image("good", 0) in batch and image("bad", 2) in batch for batch in embedder.batches
        ), "the two jobs were meant to share a batch"
        assert support.job(conn, good)["status"] == "succeeded"
        assert list(rows_per_frame(conn, "good").values()) == [1, 1, 1]
        assert_failed_with_attempt(support.job(conn, bad), f"frame {frame_id}")
        assert rows_per_frame(conn, "bad") == {0: 0, 1: 0, 2: 0}
        # Still running: the same loop takes the next job.
        later = add_video(conn, s3, "later", 2)
        loop.run(burst=True)
    assert support.job(conn, later)["status"] == "succeeded"


def test_regression_bug1_a_frame_deleted_before_its_write_fails_only_its_job(
    conn: psycopg.Connection[Any], s3: S3Endpoint
) -> None:
    """Regression (issue 16 bug 1): a frame deleted between listing and write
    (ForeignKeyViolation) fails its job with the attempt counted; the batch-mate
    job is written; the worker keeps running."""
    good = add_video(conn, s3, "good", 3)
    bad = add_video(conn, s3, "bad", 3)
    doomed = conn.execute(
        "SELECT id FROM argus.frames WHERE video_id = 'bad' AND frame_index = 1"
    ).fetchone()
    assert doomed is not None
    embedder = StandIn()

    def delete_the_frame(batch: int) -> None:
        if batch == 1:  # listed, in this batch, not written yet
            with psycopg.connect(conn.info.dsn, autocommit=True) as other:
                other.execute("DELETE FROM argus.frames WHERE id = %s", (doomed["id"],))

    embedder.on_embed = delete_the_frame
    with make_worker(conn, s3, embedder) as loop:
        loop.run(burst=True)
        assert support.job(conn, good)["status"] == "succeeded"
        assert list(rows_per_frame(conn, "good").values()) == [1, 1, 1]
        assert_failed_with_attempt(support.job(conn, bad), f"frame {doomed['id']}")
        later = add_video(conn, s3, "later", 2)
        loop.run(burst=True)
    assert support.job(conn, later)["status"] == "succeeded"


def test_regression_bug1_an_unexpected_error_never_gives_the_attempt_back(
    conn: psycopg.Connection[Any], s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue 16 bug 1): an exception nobody foresaw, raised inside the
    stream, fails the held job with its attempt counted (no release), and the loop
    goes on instead of exiting."""
    job_id = add_video(conn, s3, "v", 4)
    stop = threading.Event()

    def crash(embedder: Any, batch: Any) -> Any:
        # Stop right after: with a short backoff the next round could claim it again.
        stop.set()
        raise RuntimeError("a bug nobody foresaw")

    monkeypatch.setattr(inference, "embed_batch", crash)
    with make_worker(conn, s3, StandIn(), shutdown=stop) as loop:
        loop.run(burst=True)
    job = support.job(conn, job_id)
    assert (job["status"], job["attempts"]) == ("queued", 1), job
    assert "RuntimeError: a bug nobody foresaw" in job["last_error"]


# --- bug 3: one job id claimed twice by one worker ------------------------------------


def test_regression_bug3_a_job_cancelled_and_retried_mid_stream_finishes_on_its_new_claim(
    conn: psycopg.Connection[Any], s3: S3Endpoint
) -> None:
    """Regression (issue 16 bug 3): `cancel ID; retry ID` while the worker streams the
    job makes it claim the same id again; the new claim must not be taken for the old
    one (marked lost, stranded `running`)."""
    job_id = add_video(conn, s3, "twice", 4)
    embedder = StandIn(batch_size=2)

    def cancel_and_retry(batch: int) -> None:
        if batch == 1:  # the stream runs low: the next top-up claims the job again
            with psycopg.connect(conn.info.dsn, autocommit=True) as other:
                assert queue.cancel(other, job_id) and queue.retry(other, job_id)

    embedder.on_embed = cancel_and_retry
    with make_worker(conn, s3, embedder) as loop:
        loop.run(burst=True)
    job = support.job(conn, job_id)
    assert (job["status"], job["frames_total"], job["frames_done"]) == ("succeeded", 4, 4), job
    assert rows_per_frame(conn, "twice") == {0: 1, 1: 1, 2: 1, 3: 1}


def test_regression_bug3_one_write_holding_an_old_and_a_new_claim_of_a_job(
    conn: psycopg.Connection[Any],
) -> None:
    """Regression (issue 16 bug 3): rows of the same frame from the stale and the live
    claim of one job in one write: only the live claim's row is written, the stale
    claim is reported lost, and nothing raises UniqueViolation."""
    support.add_video(conn, "v", ["a.jpg", "b.jpg"])
    taker = queue.Queue(model=MODEL, worker_id="w", lease_seconds=60)
    segments = index.Segments(index.register(conn, MODEL, 8))
    (old,) = taker.claim(conn)
    queue.cancel(conn, old.id)
    queue.retry(conn, old.id)
    (new,) = taker.claim(conn)
    assert (new.id, new.lease_token) != (old.id, old.lease_token)
    frames = taker.missing_frames(conn, [new])[new.id]
    segments.ensure(conn, [frame.id for frame in frames])
    vector = np.ones(8, dtype=np.float32) / np.sqrt(8)
    writes = [
        store.JobWrite(job, [store.FrameResult(frame.id, vector=vector) for frame in frames])
        for job in (old, new)
    ]
    outcome = store.write(conn, writes, preprocessing="p", lease_seconds=60)
    assert outcome.lost == {old.claim}
    assert rows_per_frame(conn, "v") == {0: 1, 1: 1}
    assert support.job(conn, new.id)["frames_done"] == 2


# --- bug 4: a busy worker does not pin the NOTIFY queue -------------------------------


@contextlib.contextmanager
def running_in_thread(loop: worker.Worker, stop: threading.Event) -> Iterator[None]:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except BaseException as error:
            failures.append(error)
            raise

    thread = threading.Thread(target=run, name="test-worker")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert not failures, failures


def notify_queue_usage(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute("SELECT pg_notification_queue_usage() AS usage").fetchone()
    assert row is not None
    return float(row["usage"])


def test_regression_bug4_a_busy_worker_does_not_pin_the_notify_queue(
    conn: psycopg.Connection[Any], s3: S3Endpoint
) -> None:
    """Regression (issue 16 bug 4): while the loop streams a long job, its LISTEN
    connection must not hold back PostgreSQL's notification queue."""
    embedder = StandIn(batch_size=2)
    embedder.on_embed = lambda batch: time.sleep(0.2)  # 300 frames: 30 s busy
    stop = threading.Event()
    with make_worker(conn, s3, embedder, shutdown=stop) as loop, running_in_thread(loop, stop):
        support.wait_for(lambda: listening(conn), 10, "the idle worker to LISTEN")
        long_job = add_video(conn, s3, "long", 300)
        support.wait_for(
            lambda: support.job(conn, long_job)["frames_done"] > 0, 10, "the long job to start"
        )
        for i in range(600):  # other daemons' work: this worker cannot claim it
            conn.execute(
                "INSERT INTO argus.embedding_jobs (video_id, model) VALUES (%s, 'other/model')",
                (f"other-{i}",),
            )
        support.wait_for(lambda: notify_queue_usage(conn) == 0, 5, "the NOTIFY queue to drain")
        assert support.job(conn, long_job)["status"] == "running"  # still busy


def listening(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN %%'"
    ).fetchone()
    return bool(row and row["n"])


# --- bug 9: the listing commits durably -----------------------------------------------


class RecordingConnection:
    """Delegates to a connection; records `SHOW synchronous_commit` as each statement
    that touches job progress ran, i.e. the setting its transaction commits under."""

    def __init__(self, inner: psycopg.Connection[Any]) -> None:
        self.inner = inner
        self.commit_modes: list[str] = []

    def execute(self, query: Any, params: Any = None) -> Any:
        cursor = self.inner.execute(query, params)
        if query == db.queries()["list_missing_frames"]:
            mode = self.inner.execute("SHOW synchronous_commit").fetchone()
            assert mode is not None
            self.commit_modes.append(mode["synchronous_commit"])
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_regression_bug9_the_listing_commits_durably(conn: psycopg.Connection[Any]) -> None:
    """Regression (issue 16 bug 9): the listing writes the job's progress counts; a
    lazy commit could lose them in a server crash while the claim survives."""
    support.add_video(conn, "v", ["a.jpg", "b.jpg"])
    taker = queue.Queue(model=MODEL, worker_id="w", lease_seconds=60)
    jobs = taker.claim(conn)
    recording = RecordingConnection(conn)
    listed = taker.missing_frames(recording, jobs)  # type: ignore[arg-type]
    assert len(listed[jobs[0].id]) == 2
    assert recording.commit_modes == ["on"]


# --- bug 12: the lease keeper survives a failed round ---------------------------------


def lease_expires_at(conn: psycopg.Connection[Any], job_id: int) -> Any:
    return support.job(conn, job_id)["lease_expires_at"]


def test_regression_bug12_the_lease_keeper_survives_an_unexpected_error(
    conn: psycopg.Connection[Any], s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue 16 bug 12): an exception in one renewal round must not end the
    lease keeper: later rounds still extend the job's lease."""
    job_id = add_video(conn, s3, "slow", 2)
    real_renew = queue.Queue.renew
    rounds: list[str] = []

    def renew_failing_once(self: queue.Queue, connection: Any, jobs: Any) -> set[int]:
        if not rounds:
            rounds.append("failed")
            raise RuntimeError("a bug in one renewal round")
        rounds.append("renewed")
        return real_renew(self, connection, jobs)

    monkeypatch.setattr(queue.Queue, "renew", renew_failing_once)
    leases: list[Any] = []

    def slow_batch(batch: int) -> None:
        # No write meanwhile: only the keeper can extend the lease.
        leases.append(lease_expires_at(conn, job_id))
        deadline = time.monotonic() + 5
        while rounds.count("renewed") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        leases.append(lease_expires_at(conn, job_id))

    embedder = StandIn()
    embedder.on_embed = slow_batch
    with make_worker(conn, s3, embedder, lease_seconds=1.5) as loop:
        loop.run(burst=True)
    assert rounds[:3] == ["failed", "renewed", "renewed"], rounds
    assert leases[1] > leases[0]
    assert support.job(conn, job_id)["status"] == "succeeded"


def test_regression_bug12_a_dead_lease_keeper_stops_claiming_and_fails_liveness(
    conn: psycopg.Connection[Any], s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue 16 bug 12): if the keeper dies anyway (here: every round fails),
    the worker claims nothing more (its leases would lapse) and /livez goes red."""
    first = add_video(conn, s3, "first", 2)

    def renew_always_failing(self: queue.Queue, connection: Any, jobs: Any) -> set[Any]:
        raise RuntimeError("a bug in every renewal round")

    monkeypatch.setattr(queue.Queue, "renew", renew_always_failing)
    state = health.HealthState(heartbeat_timeout=60)
    later: list[int] = []
    embedder = StandIn()

    def wait_for_the_keeper_to_die(batch: int) -> None:
        support.wait_for(lambda: loop.keeper.failure() is not None, 20, "a dead keeper")
        later.append(add_video(conn, s3, "later", 2))

    embedder.on_embed = wait_for_the_keeper_to_die
    with make_worker(conn, s3, embedder, lease_seconds=1.5) as loop:
        state.watch(loop.keeper)
        state.beat()
        loop.run(burst=True)
    assert support.job(conn, first)["status"] == "succeeded"
    job = support.job(conn, later[0])
    assert (job["status"], job["attempts"]) == ("queued", 0)
    live, reason = state.live()
    assert not live and "lease-keeper" in reason, reason
