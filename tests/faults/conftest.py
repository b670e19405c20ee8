"""Fixtures of the fault suite: an audited database, a fleet of real daemons, frame images."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from PIL import Image

from argus_embedder import settings
from argus_embedder.gateways import index
from argus_embedder.pipeline import embedder, worker
from tests import support
from tests.conftest import S3Endpoint
from tests.faults import harness, invariants
from tests.faults.proxy import FaultProxy


@pytest.fixture(scope="session")
def tiny_dimension(tiny_siglip_dir: Path) -> int:
    return embedder.model_dimension(str(tiny_siglip_dir))


@pytest.fixture
def proxy(s3: S3Endpoint) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the S3 endpoint (faults scripted by the test)."""
    with FaultProxy(s3.url) as running:
        yield running


@pytest.fixture(scope="session")
def tiny_embedder(tiny_siglip_dir: Path) -> embedder.Embedder:
    return embedder.load_embedder(str(tiny_siglip_dir), "cpu", batch_size=4)


@pytest.fixture
def audited(
    conn: psycopg.Connection[Any], tiny_siglip_dir: Path, tiny_dimension: int
) -> psycopg.Connection[Any]:
    """The test database with the write audit installed and the tiny model registered
    (as `migrate --model` does), so concurrently starting daemons find it there."""
    invariants.install_write_audit(conn)
    index.register(conn, str(tiny_siglip_dir), tiny_dimension)
    return conn


@pytest.fixture
def fleet(
    worker_url: str, s3: S3Endpoint, tiny_siglip_dir: Path, tmp_path: Path
) -> Iterator[harness.Fleet]:
    """Daemons as production runs them: a login holding only argus_worker."""
    fleet = harness.Fleet(
        harness.daemon_env(worker_url, tiny_siglip_dir, s3.url, s3.bucket), tmp_path
    )
    try:
        yield fleet
    finally:
        fleet.stop_all()


def small_jpeg(seed: int, size: tuple[int, int] = (48, 32)) -> bytes:
    """A small, distinct JPEG: cheap to decode, so the faults and not the CPU set the pace."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def add_videos(
    connection: psycopg.Connection[Any],
    s3: S3Endpoint,
    count: int,
    frames_per_video: int,
    *,
    prefix: str = "video",
    distinct_objects: int = 8,
    enqueue: bool = True,
    max_attempts: int | None = None,
) -> list[str]:
    """`count` videos of `frames_per_video` frames each, the way the frame stage adds them.

    Frames point at `distinct_objects` uploaded JPEGs (uploading thousands of objects to
    moto would dominate the run time); each frame is still its own row and its own GET.
    """
    uris = [s3.put(f"{prefix}/{i:03d}.jpg", small_jpeg(i)) for i in range(distinct_objects)]
    videos = []
    for number in range(count):
        video = f"{prefix}-{number:04d}"
        frame_uris = [uris[(number + i) % len(uris)] for i in range(frames_per_video)]
        job_id = support.add_video(connection, video, frame_uris, enqueue=enqueue)
        if max_attempts is not None and job_id is not None:
            connection.execute(
                "UPDATE argus.embedding_jobs SET max_attempts = %s WHERE id = %s",
                (max_attempts, job_id),
            )
        videos.append(video)
    return videos


def job_counts(connection: psycopg.Connection[Any]) -> dict[str, int]:
    rows = connection.execute(
        "SELECT status, count(*) AS n FROM argus.embedding_jobs GROUP BY status"
    ).fetchall()
    return {row["status"]: int(row["n"]) for row in rows}


def all_final(connection: psycopg.Connection[Any]) -> bool:
    counts = job_counts(connection)
    return counts.get("queued", 0) == 0 and counts.get("running", 0) == 0


def run_worker(
    database_url: str,
    model: embedder.Embedder,
    *,
    bucket: str | None,
    endpoint: str | None,
    worker_id: str,
    storage: Any = None,
    until: Any = None,
    timeout: float = 120,
) -> None:
    """The real worker loop in this process, on its own thread, until `until()` (default:
    no job left queued or running) or `timeout`. Set PGAPPNAME to `worker_id` first
    (monkeypatch), so the write audit can attribute its rows. The worker connects as a
    login holding only argus_worker, as production runs it; `database_url` is an admin's."""
    with support.login_role(database_url, "argus_worker") as worker_url:
        _run_worker_as(
            database_url,
            worker_url,
            model,
            bucket=bucket,
            endpoint=endpoint,
            worker_id=worker_id,
            storage=storage,
            until=until,
            timeout=timeout,
        )


def _run_worker_as(
    database_url: str,
    worker_url: str,
    model: embedder.Embedder,
    *,
    bucket: str | None,
    endpoint: str | None,
    worker_id: str,
    storage: Any,
    until: Any,
    timeout: float,
) -> None:
    config = settings.load(
        env={},
        database_url=worker_url,
        model=model.model,
        device="cpu",
        s3_bucket=bucket,
        s3_endpoint_url=endpoint,
        metrics_port="0",
        poll_interval="0.1",
        lease_seconds="5",
        worker_id=worker_id,
    )
    stop = threading.Event()
    with (
        psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as watch,
        worker.Worker(config, worker_url, model, storage=storage, shutdown=stop) as loop,
    ):
        thread = threading.Thread(target=loop.run, name="worker-under-test")
        thread.start()
        done = until or (lambda: all_final(watch))
        try:
            harness.wait_for(lambda: done() or not thread.is_alive(), timeout, "the worker")
            assert thread.is_alive(), "the worker loop died"
        finally:
            stop.set()
            thread.join(30)


def scaled(full: int, minimum: int = 1) -> int:
    """`full` times $ARGUS_TEST_FAULT_SCALE (default 1), at least `minimum`: CI runs the slow
    forms of the scenarios smaller (see docs/reliability.md)."""
    return max(minimum, round(full * float(os.environ.get("ARGUS_TEST_FAULT_SCALE", "1"))))
