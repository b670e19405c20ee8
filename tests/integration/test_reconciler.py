"""The reconciler against a real PostgreSQL and S3: frames nobody enqueued get embedded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.sql
import pytest

from argus_embedder import db, metrics, settings
from argus_embedder.commands import status
from argus_embedder.gateways import index, passes, queue
from argus_embedder.pipeline import embedder, worker
from argus_embedder.services import periodic, queue_gauges, reconciler, registry
from tests import support
from tests.acceptance.conftest import Daemon, free_port
from tests.conftest import S3Endpoint, textured_jpeg

MODEL = "test/reconciled"


@pytest.fixture(scope="module")
def tiny_embedder(tiny_siglip_dir: Path) -> embedder.Embedder:
    return embedder.load_embedder(str(tiny_siglip_dir), "cpu", batch_size=4)


def make_settings(database_url: str, s3: S3Endpoint, model: str, **extra: str) -> settings.Settings:
    return support.worker_settings(database_url, s3.bucket, s3.url, model, batch_size=4, **extra)


def register(conn: psycopg.Connection[Any], model: str = MODEL) -> index.ModelInfo:
    return index.register(conn, model, 4, "none")


def embed_rows(conn: psycopg.Connection[Any], model: index.ModelInfo, video_id: str) -> None:
    """Vectors for every frame of a video, as if a worker had written them."""
    ids = [
        row["id"]
        for row in conn.execute("SELECT id FROM argus.frames WHERE video_id = %s", (video_id,))
    ]
    index.Segments(model).ensure(conn, ids)
    conn.execute(
        "INSERT INTO argus.frame_embeddings (frame_id, model, embedding) "
        "SELECT id, %s, '[1,0,0,0]' FROM argus.frames WHERE video_id = %s",
        (model.model, video_id),
    )


def jobs_of(conn: psycopg.Connection[Any], video_id: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT * FROM argus.embedding_jobs WHERE video_id = %s ORDER BY id", (video_id,)
    ).fetchall()


def test_two_halves_with_one_enqueue_end_fully_embedded(
    conn: psycopg.Connection[Any], s3: S3Endpoint, tiny_embedder: embedder.Embedder
) -> None:
    """The frame stage enqueues once; the second half lands after the job listed its
    frames. Nobody acts: a daemon's loop plus its reconciler embed all of it."""
    uris = [s3.put(f"halves/{i:03d}.jpg", textured_jpeg(i)) for i in range(24)]
    config = make_settings(conn.info.dsn, s3, tiny_embedder.model, reconcile_interval="0.3")
    stop = threading.Event()
    enqueued_before = metrics.value("argus_embedder_reconciler_jobs_enqueued_total")
    with (
        worker.Worker(config, conn.info.dsn, tiny_embedder, shutdown=stop) as loop,
        reconciler.running(config, conn.info.dsn, stop),
    ):
        runner = threading.Thread(target=loop.run, name="test-loop")
        runner.start()
        try:
            with conn.transaction():  # frames and job at once, as a frame stage would
                first_job = support.add_video(conn, "halves", uris[:12])
            assert first_job is not None
            # The job has listed its frames once it has written a batch of them.
            support.wait_for(
                lambda: support.job(conn, first_job)["frames_done"] > 0, 30, "progress"
            )
            support.add_video(conn, "halves", uris[12:], first_index=12, enqueue=False)
            support.wait_for(
                lambda: len(support.embeddings(conn, "halves")) == 24, 60, "all 24 frames"
            )
        finally:
            stop.set()
            runner.join(timeout=30)
    rows = support.embeddings(conn, "halves")
    assert [row["frame_index"] for row in rows] == list(range(24))
    assert all(row["embedding"] is not None for row in rows)
    first = support.job(conn, first_job)
    assert (first["status"], first["frames_total"]) == ("succeeded", 12)
    jobs = jobs_of(conn, "halves")
    follow_up = [job for job in jobs if job["id"] != first_job]
    assert len(follow_up) == 1, jobs  # the reconciler's, naming the model
    assert follow_up[0]["model"] == tiny_embedder.model
    assert follow_up[0]["status"] == "succeeded"
    assert follow_up[0]["frames_done"] == 24  # counted from the rows already there
    assert metrics.value("argus_embedder_reconciler_jobs_enqueued_total") == enqueued_before + 1


def test_a_pass_enqueues_only_uncovered_videos_and_adds_nothing_twice(
    conn: psycopg.Connection[Any],
) -> None:
    model = register(conn)
    support.add_video(conn, "forgotten", ["a", "b", "c"], enqueue=False)
    support.add_video(conn, "null-job", ["a", "b"])  # NULL model: the configured one
    support.add_video(conn, "running", ["a"], enqueue=False)
    running = queue.enqueue(conn, "running", model=MODEL, priority=0)
    conn.execute("UPDATE argus.embedding_jobs SET status = 'running' WHERE id = %s", (running,))
    support.add_video(conn, "other-model", ["a"], enqueue=False)
    queue.enqueue(conn, "other-model", model="test/other", priority=0)
    support.add_video(conn, "done", ["a", "b"], enqueue=False)
    embed_rows(conn, model, "done")

    result = reconciler.reconcile(conn, MODEL)
    assert result.complete
    assert result.missing_frames == 3 + 2 + 1 + 1  # all but "done", in flight or not
    assert result.missing_videos == 4
    assert result.enqueued == 2
    assert [job["model"] for job in jobs_of(conn, "forgotten")] == [MODEL]
    assert [job["model"] for job in jobs_of(conn, "other-model")] == ["test/other", MODEL]
    assert len(jobs_of(conn, "null-job")) == 1
    assert len(jobs_of(conn, "running")) == 1
    assert jobs_of(conn, "done") == []
    assert reconciler.reconcile(conn, MODEL, chunk=2).enqueued == 0  # small slices, same answer


def test_a_failed_video_waits_for_new_frames_or_a_retry(conn: psycopg.Connection[Any]) -> None:
    """No poison loop: the reconciler does not re-enqueue a video whose last job failed
    until it gets a newer frame or an operator retries the job."""
    register(conn)
    support.add_video(conn, "poison", ["a", "b"], enqueue=False)
    support.add_video(conn, "cancelled", ["a"], enqueue=False)
    failed = queue.enqueue(conn, "poison", model=MODEL, priority=0)
    cancelled = queue.enqueue(conn, "cancelled", model=None, priority=0)
    conn.execute(
        "UPDATE argus.embedding_jobs SET status = 'failed', started_at = now(), "
        "finished_at = now(), attempts = max_attempts WHERE id = %s",
        (failed,),
    )
    assert queue.cancel(conn, cancelled)

    assert reconciler.reconcile(conn, MODEL).enqueued == 0
    assert reconciler.reconcile(conn, MODEL).enqueued == 0  # every pass: still nothing

    support.add_video(conn, "poison", ["c"], first_index=2, enqueue=False)  # a newer frame
    result = reconciler.reconcile(conn, MODEL)
    assert result.enqueued == 1
    assert jobs_of(conn, "poison")[-1]["status"] == "queued"

    assert queue.retry(conn, cancelled)  # the operator re-arms it: that job is queued again
    assert reconciler.reconcile(conn, MODEL).enqueued == 0
    assert len(jobs_of(conn, "cancelled")) == 1


def test_a_video_still_receiving_frames_is_left_to_its_frame_stage(
    conn: psycopg.Connection[Any],
) -> None:
    register(conn)
    support.add_video(conn, "arriving", ["a", "b"], enqueue=False)
    result = reconciler.reconcile(conn, MODEL, settle_seconds=60)
    assert (result.missing_frames, result.enqueued) == (2, 0)
    conn.execute("UPDATE argus.frames SET created_at = now() - interval '61 seconds'")
    assert reconciler.reconcile(conn, MODEL, settle_seconds=60).enqueued == 1


def test_regression_issue27_finding5_a_future_created_at_hides_no_video(
    conn: psycopg.Connection[Any], login: Callable[..., str]
) -> None:
    """Regression (issue 27, finding 5): a frame stage may write created_at (its column
    grant allows it); 'infinity', or a clock far ahead, kept the video "still receiving
    frames" to the settle test forever, so the reconciler never enqueued the forgotten
    video. The server's clock decides: only a created_at within the settle window of now
    (either side) is young."""
    register(conn)
    with psycopg.connect(login("argus_frame_stage"), autocommit=True) as stage:
        stage.execute(
            "INSERT INTO argus.frames (video_id, frame_index, image_uri, created_at) VALUES "
            "('forever', 0, 'a', 'infinity'), ('ahead', 0, 'a', now() + interval '1 day'), "
            "('skewed', 0, 'a', now() + interval '30 seconds')"
        )
    result = reconciler.reconcile(conn, MODEL, settle_seconds=60)
    assert (result.missing_frames, result.enqueued) == (3, 2)
    enqueued = conn.execute("SELECT video_id FROM argus.embedding_jobs ORDER BY video_id")
    assert [row["video_id"] for row in enqueued] == ["ahead", "forever"]  # skewed: settling


def test_a_fleet_pass_runs_once_per_interval(conn: psycopg.Connection[Any]) -> None:
    register(conn)
    support.add_video(conn, "v", ["a"], enqueue=False)
    conn.execute("UPDATE argus.frames SET created_at = now() - interval '1 minute'")
    first = reconciler.run_pass(conn, MODEL, interval=0.5, worker_id="one")
    assert first is not None and first.enqueued == 1
    assert reconciler.run_pass(conn, MODEL, interval=0.5, worker_id="two") is None
    time.sleep(0.6)
    again = reconciler.run_pass(conn, MODEL, interval=0.5, worker_id="two")
    assert again is not None and again.enqueued == 0
    last = passes.latest(conn, reconciler.pass_name(MODEL))
    assert last is not None and last.worker_id == "two"
    assert last.result["missing_frames"] == 1 and last.result["complete"]


def test_the_background_thread_survives_a_lost_connection(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    """A restart or failover kills the thread's connection: it reconnects and goes on."""
    backends: list[int] = []

    def remember(connection: psycopg.Connection[Any], stopping: periodic.Stopping) -> None:
        connection.execute(db.queries()["ping"])
        backends.append(connection.info.backend_pid)

    errors_before = metrics.value("argus_embedder_db_errors_total")
    stop = threading.Event()
    with periodic.running(database_url, [periodic.Task("probe", 0.1, remember)], stop=stop):
        support.wait_for(lambda: len(backends) >= 2, 10, "two runs")
        conn.execute("SELECT pg_terminate_backend(%s)", (backends[-1],))
        support.wait_for(lambda: len(set(backends)) >= 2, 15, "a run on a new connection")
    assert metrics.value("argus_embedder_db_errors_total") >= errors_before + 1


def test_the_fleet_work_runs_with_least_privilege(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    """The daemon's background work as a role holding only argus_worker, and status as
    one holding only argus_reader (DESIGN's least privilege)."""
    register(conn)
    support.add_video(conn, "forgotten", ["a", "b"], enqueue=False)
    conn.execute("UPDATE argus.frames SET created_at = now() - interval '1 minute'")
    suffix = f"{os.getpid()}_{time.monotonic_ns() % 1_000_000}"
    roles = {"argus_worker": f"embedder_{suffix}", "argus_reader": f"reader_{suffix}"}
    for group, role in roles.items():
        conn.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'least-privilege'").format(
                psycopg.sql.Identifier(role)
            )
        )
        conn.execute(
            psycopg.sql.SQL("GRANT {} TO {}").format(
                psycopg.sql.Identifier(group), psycopg.sql.Identifier(role)
            )
        )
    try:

        def url(role: str) -> str:
            return psycopg.conninfo.make_conninfo(
                database_url, user=role, password="least-privilege"
            )

        config = settings.load(env={}, model=MODEL, worker_id="least")
        with db.connect(url(roles["argus_worker"]), autocommit=True) as restricted:
            result = reconciler.run_pass(restricted, MODEL, interval=1, worker_id="least")
            assert result is not None and result.enqueued == 1
            queue_gauges.task(config).run(restricted, lambda: False)
            registry.task("least", model=MODEL, device="cpu", version="test").run(
                restricted, lambda: False
            )
        with db.connect(url(roles["argus_reader"]), autocommit=True) as reader:
            report = status.collect(reader, model=MODEL)
        assert report["queue"]["frames_waiting"] == 2
        assert [worker["worker_id"] for worker in report["workers"]] == ["least"]
        assert report["reconciler"][0]["enqueued"] == 1
    finally:
        for role in roles.values():
            conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


@pytest.mark.parametrize("frames", [200_000, pytest.param(1_000_000, marks=pytest.mark.slow)])
def test_the_scan_is_a_merge_of_index_only_scans_on_a_large_table(
    conn: psycopg.Connection[Any], frames: int
) -> None:
    """A table of `frames` frames (100 per video) with 5 missing a row: the slice query
    merges two index-only scans, and a whole pass stays well under a second a million."""
    model = register(conn)
    index.Segments(model).ensure(conn, range(0, frames + 1, model.segment_rows))
    started = time.perf_counter()
    conn.execute(
        "INSERT INTO argus.frames (video_id, frame_index, image_uri) "
        "SELECT 'video-' || lpad((g / 100)::text, 6, '0'), g %% 100, 's3://b/' || g "
        "FROM generate_series(0, %s) g",
        (frames - 1,),
    )
    gap = frames // 5
    conn.execute(
        "INSERT INTO argus.frame_embeddings (frame_id, model, embedding) "
        "SELECT id, %s, '[1,0,0,0]' FROM argus.frames WHERE id %% %s <> 7",
        (MODEL, gap),
    )
    conn.execute("VACUUM (ANALYZE) argus.frames")
    conn.execute("VACUUM (ANALYZE) argus.frame_embeddings")
    print(f"built {frames} frames in {time.perf_counter() - started:.1f}s")

    sql = db.queries()["reconcile_missing"].as_string(conn)
    params = {"low": reconciler.CHUNK_FRAMES, "high": 2 * reconciler.CHUNK_FRAMES, "model": MODEL}
    with conn.transaction():  # the slice's own settings, as reconcile() runs it
        conn.execute(db.queries()["reconcile_plan"])
        plan = "\n".join(
            row["QUERY PLAN"]
            for row in conn.execute("EXPLAIN " + sql, params)  # type: ignore[call-overload]
        )
    print(plan)
    assert "Seq Scan" not in plan, plan
    assert "Merge Anti Join" in plan, plan
    assert "Index Only Scan using frames_id_video_idx" in plan, plan
    assert "Index Only Scan using frame_embeddings_" in plan, plan

    timings = []
    for _ in range(2):
        started = time.perf_counter()
        result = reconciler.reconcile(conn, MODEL)
        timings.append(time.perf_counter() - started)
        assert result.complete and result.missing_frames == 5 and result.missing_videos == 5
    assert result.enqueued == 0  # the first pass enqueued them
    print(f"reconciler pass over {frames} frames: {[f'{t * 1000:.0f} ms' for t in timings]}")
    assert min(timings) < 5.0 * frames / 1_000_000 + 1.0


def test_two_daemons_with_the_reconciler_never_enqueue_duplicates(
    conn: psycopg.Connection[Any],
    database_url: str,
    s3: S3Endpoint,
    tiny_siglip_dir: Path,
    tmp_path: Path,
) -> None:
    """Two real daemons (reconciler every 0.4 s, device auto on a GPU-less machine):
    videos the frame stage never enqueued, arriving in waves, each get exactly one job;
    both daemons report the CPU fallback, and status names it per worker."""
    env = {
        **os.environ,
        "ARGUS_DATABASE_URL": database_url,
        "ARGUS_MODEL": str(tiny_siglip_dir),
        "ARGUS_DEVICE": "auto",
        "ARGUS_S3_BUCKET": s3.bucket,
        "ARGUS_S3_ENDPOINT_URL": s3.url,
        "ARGUS_RECONCILE_INTERVAL": "0.4",
        "ARGUS_POLL_INTERVAL": "0.2",
    }
    daemons = [
        Daemon(
            {**env, "ARGUS_METRICS_PORT": str(free_port()), "ARGUS_WORKER_ID": f"daemon-{n}"},
            tmp_path / f"daemon-{n}.log",
            [],
        )
        for n in range(2)
    ]
    try:
        for daemon in daemons:
            daemon.wait_ready()
        videos = [f"wave{wave}-{n}" for wave in range(3) for n in range(4)]
        for wave in range(3):
            for video in videos[wave * 4 : wave * 4 + 4]:
                uris = [s3.put(f"{video}/{i}.jpg", textured_jpeg(i)) for i in range(3)]
                with conn.transaction():  # a video's frames at once; nobody enqueues
                    support.add_video(conn, video, uris, enqueue=False)
            time.sleep(0.5)

        def all_embedded() -> bool:
            row = conn.execute("SELECT count(*) AS n FROM argus.frame_embeddings").fetchone()
            return row is not None and row["n"] == 3 * len(videos)

        support.wait_for(all_embedded, 90, "every frame embedded")
        time.sleep(1.0)  # a few more passes: they must add nothing
        for video in videos:
            jobs = jobs_of(conn, video)
            assert len(jobs) == 1, jobs
            assert jobs[0]["status"] == "succeeded" and jobs[0]["model"] == str(tiny_siglip_dir)
        scraped = [daemon.get("/metrics")[1] for daemon in daemons]
        enqueued = sum(
            _sample(text, "argus_embedder_reconciler_jobs_enqueued_total") for text in scraped
        )
        assert enqueued == len(videos)

        # The device self-check: auto fell back to the CPU, and every surface says so.
        for daemon, text in zip(daemons, scraped, strict=True):
            _, body = daemon.get("/readyz")
            assert json.loads(body)["details"]["device"] == "cpu (no CUDA device found)"
            assert 'device="cpu (no CUDA device found)"' in text
        report = _status_json(database_url)
        devices = {worker["worker_id"]: worker["device"] for worker in report["workers"]}
        assert devices == {f"daemon-{n}": "cpu (no CUDA device found)" for n in range(2)}
        for daemon in daemons:
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == 0, daemon.log()
            assert daemon.log().count("found no CUDA device") == 1  # warned once
        stopped = _status_json(database_url)["workers"]
        assert all(worker["stopped"] for worker in stopped), stopped
    finally:
        for daemon in daemons:
            daemon.stop()


def _sample(metrics_text: str, name: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def _status_json(database_url: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "argus_embedder", "status", "--json"],
        env={**os.environ, "ARGUS_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_regression_bug11_a_pass_skips_empty_id_ranges(conn: psycopg.Connection[Any]) -> None:
    """Regression (issue 16 bug 11): a pass walked every slice from the lowest frame id to
    the highest, so one frame at id 10^12 meant ten million empty slices per pass."""
    register(conn)
    support.add_video(conn, "near", ["a", "b", "c"], enqueue=False)
    conn.execute(
        "INSERT INTO argus.frames (id, video_id, frame_index, image_uri) "
        "OVERRIDING SYSTEM VALUE VALUES (10 ^ 12, 'far', 0, 'x')"
    )
    support.add_video(conn, "near", ["d"], first_index=3, enqueue=False)  # id 4
    slices = 0

    def counting() -> bool:  # reconcile asks once per slice
        nonlocal slices
        slices += 1
        return slices > 100

    result = reconciler.reconcile(conn, MODEL, stopping=counting)
    assert result.complete, slices
    assert slices == 2  # [0, 100k) and [10^12, 10^12 + 100k)
    assert (result.missing_frames, result.missing_videos, result.enqueued) == (5, 2, 2)
    assert [job["model"] for job in jobs_of(conn, "far")] == [MODEL]
