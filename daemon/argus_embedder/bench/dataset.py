"""The benchmark's world: synthetic 720p frames, a real S3 endpoint, a scratch database.

Everything here is set-up for `argus_embedder.bench`: it is timed by nobody.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import psycopg
import psycopg.conninfo
from PIL import Image, ImageDraw

from argus_embedder import db, errors
from argus_embedder.gateways import queue

FRAME_SIZE = (1280, 720)  # (width, height): a 720p video frame
JPEG_QUALITY = 90
BUCKET = "argus-bench"
DATABASE = "argus_bench"  # the scratch database, dropped and created by every run

T = TypeVar("T")


class BenchError(errors.ArgusError):
    """A scenario did not do what it was measured doing (frames missing, jobs unfinished)."""


# --- frames ----------------------------------------------------------------------


def textured_frames(count: int, *, seed: int = 2026) -> list[bytes]:
    """`count` distinct 1280x720 JPEGs (quality 90) with the texture of real footage.

    Smooth colour fields at three scales, hard-edged shapes and sensor-like noise: they
    encode to ~200 KB, like real 720p frames, and decode as slowly. Flat colours would
    flatter every decoder.
    """
    width, height = FRAME_SIZE
    noise = np.random.default_rng(seed).normal(0.0, 5.0, (height, width, 3)).astype(np.float32)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(lambda index: _frame(seed + 1 + index, noise), range(count)))


def _frame(seed: int, noise: npt.NDArray[np.float32]) -> bytes:
    rng = np.random.default_rng(seed)
    width, height = FRAME_SIZE
    pixels = rng.uniform(60.0, 190.0, 3).astype(np.float32) + np.roll(
        noise, int(rng.integers(0, width)), axis=1
    )
    for grid, amplitude in (((6, 10), 70.0), ((45, 80), 25.0), ((180, 320), 12.0)):
        cells = rng.uniform(0.0, 255.0, (*grid, 3)).astype(np.uint8)
        field = Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)
        pixels += (np.asarray(field, dtype=np.float32) - 127.5) * (amplitude / 127.5)
    image = Image.fromarray(np.clip(pixels, 0.0, 255.0).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        left, top = int(rng.integers(0, width)), int(rng.integers(0, height))
        side = int(rng.integers(20, 250))
        colour = (int(rng.integers(0, 256)), int(rng.integers(0, 256)), int(rng.integers(0, 256)))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((left, top, left + side, top + int(side * 0.6)), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# --- S3 --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class S3Server:
    url: str
    pid: int


@contextlib.contextmanager
def s3_endpoint() -> Iterator[S3Server]:
    """moto's S3 as a real HTTP endpoint on loopback, in a child process.

    Its own process, like a real S3 endpoint: serving a GET takes moto milliseconds of
    Python, which in this process would be taken from the worker's GIL.
    """
    # moto accepts any credentials, but boto3 refuses to sign without some.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "argus-bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "argus-bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    command = [sys.executable, "-c", "from argus_embedder.bench import dataset; dataset.serve_s3()"]
    with subprocess.Popen(  # noqa: S603 - our own interpreter and code
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as server:
        assert server.stdin is not None and server.stdout is not None
        try:
            address = server.stdout.readline().split()
            if len(address) != 2:
                raise BenchError("moto's S3 server did not start (see stderr)")
            yield S3Server(f"http://{address[0]}:{address[1]}", server.pid)
        finally:
            server.stdin.close()  # the server stops when its stdin closes
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


def serve_s3() -> None:
    """The child's side of s3_endpoint: serve until stdin closes."""
    from moto.server import ThreadedMotoServer

    for name in ("werkzeug", "moto"):
        logging.getLogger(name).setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        print(host, port, flush=True)
        sys.stdin.read()
    finally:
        server.stop()


def upload(endpoint: str, frames: Sequence[bytes]) -> list[str]:
    """Put each frame into the bench bucket; returns their s3:// URIs in order."""
    import boto3

    client: Any = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    )
    client.create_bucket(Bucket=BUCKET)
    keys = [f"frames/{index:05d}.jpg" for index in range(len(frames))]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for future in [
            pool.submit(client.put_object, Bucket=BUCKET, Key=key, Body=data)
            for key, data in zip(keys, frames, strict=True)
        ]:
            future.result()
    return [f"s3://{BUCKET}/{key}" for key in keys]


# --- PostgreSQL ----------------------------------------------------------------


# The scratch databases a bench may create: name -> its drop and create blocks.
SCRATCH_BLOCKS = {
    DATABASE: ("bench_drop_database", "bench_create_database"),
    "argus_bench_status_1x": (
        "bench_drop_argus_bench_status_1x",
        "bench_create_argus_bench_status_1x",
    ),
    "argus_bench_status_10x": (
        "bench_drop_argus_bench_status_10x",
        "bench_create_argus_bench_status_10x",
    ),
}


@contextlib.contextmanager
def scratch_database(admin_url: str, name: str = DATABASE) -> Iterator[str]:
    """A freshly created and migrated database `name` on `admin_url`'s server: `argus_bench`,
    or another of SCRATCH_BLOCKS (DDL takes no parameters: each name has its blocks)."""
    drop, create = SCRATCH_BLOCKS[name]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(db.queries()[drop])
        admin.execute(db.queries()[create])
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        db.migrate(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(db.queries()[drop])


def server_versions(url: str) -> dict[str, str]:
    with db.connect(url, autocommit=True) as connection:
        row = connection.execute(db.queries()["bench_server_versions"]).fetchone()
    assert row is not None
    return {"postgres": str(row["postgres"]), "pgvector": str(row["pgvector"])}


def add_videos(
    connection: psycopg.Connection[Any],
    videos: Mapping[str, Sequence[str]],
    *,
    model: str | None = None,
    enqueue: bool = True,
) -> None:
    """Insert each video's frames (video id -> image URIs) and, with `enqueue`, its job."""
    with connection.transaction():
        with connection.cursor().copy(db.queries()["bench_copy_frames"]) as copy:
            for video_id, uris in videos.items():
                for index, uri in enumerate(uris):
                    copy.write_row((video_id, index, uri))
        if enqueue:
            add_jobs(connection, videos, model=model)


def add_jobs(
    connection: psycopg.Connection[Any], video_ids: Iterable[str], *, model: str | None
) -> None:
    """Enqueue one job per video, as the frame stage does once a video's frames are in."""
    for video_id in video_ids:
        queue.enqueue(connection, video_id, model=model, priority=0)


def cycle(items: Sequence[T], count: int, *, start: int = 0) -> list[T]:
    """`count` items taken round-robin from `items` (frames repeat; their bytes are real)."""
    return [items[(start + index) % len(items)] for index in range(count)]


def check_outcome(
    connection: psycopg.Connection[Any], model: str, video_ids: Sequence[str], frames: int
) -> None:
    """Raise BenchError unless every frame of `video_ids` got a vector and every job succeeded."""
    row = connection.execute(
        db.queries()["bench_outcome"], {"model": model, "video_ids": list(video_ids)}
    ).fetchone()
    assert row is not None
    if row["embedded"] != frames or row["failed"] or row["unfinished_jobs"]:
        raise BenchError(
            f"run of {len(video_ids)} video(s) left {row['embedded']}/{frames} frames embedded, "
            f"{row['failed']} failed, {row['unfinished_jobs']} job(s) not succeeded"
        )
