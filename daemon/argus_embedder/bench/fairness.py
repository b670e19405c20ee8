"""fair_start_wait_ratio (DESIGN §7): how long a one-video project waits behind another
project's backlog.

Project `bench-backlog` enqueues `backlog` jobs and a real Worker (the daemon's loop,
in a thread) works through them; once it has finished a few (steady state), project
`bench-newcomer` enqueues one job. The figure is the seconds from that enqueue to the
job's start (its claim, `started_at`) divided by the mean seconds one backlog job runs
(`finished_at - started_at`). All times are the database's own clock.

Each backlog job has two batches of frames, as many as the worker buffers ahead, so a
job's run is about its own work and the buffer holds about one job: with one-frame
jobs the buffer would hold dozens and hide the order in which jobs are claimed. First
in, first out would give about `backlog` ÷ 2; taking turns, under 1. The rest of the
backlog is cancelled once the newcomer has finished: the figure needs only the start.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from argus_embedder import db
from argus_embedder.bench import dataset
from argus_embedder.gateways import frames, queue
from argus_embedder.pipeline import worker

BACKLOG_PROJECT = "bench-backlog"
NEWCOMER_PROJECT = "bench-newcomer"
SETTLE_JOBS = 3  # backlog jobs finished before the newcomer arrives
TIMEOUT_SECONDS = 600.0
POLL_SECONDS = 0.02


@dataclasses.dataclass(frozen=True)
class Result:
    ratio: float  # the figure
    start_wait_seconds: float  # the newcomer's enqueue to its claim
    backlog_job_seconds: float  # mean run of a finished backlog job (claim to finish)
    backlog_jobs: int  # enqueued
    backlog_jobs_finished: int  # when the newcomer finished (the mean's sample)
    claimed_while_waiting: int  # backlog jobs claimed between the newcomer's enqueue and claim
    frames_per_job: int
    newcomer_total_seconds: float  # its enqueue to its finish


def run(
    url: str,
    uris: Sequence[str],
    make_worker: Callable[[], worker.Worker],
    *,
    model: str,
    frames_per_job: int,
    backlog: int = 200,
    settle: int = SETTLE_JOBS,
) -> Result:
    """Measure the figure with a real Worker from `make_worker` (jobs of `model`)."""
    backlog_videos = [f"fair-backlog-{n:05d}" for n in range(backlog)]
    newcomer_video = "fair-newcomer"
    with db.connect(url, autocommit=True) as connection:
        new_frames = [
            frames.NewFrame(video_id, index, uri, project_id=BACKLOG_PROJECT)
            for number, video_id in enumerate(backlog_videos)
            for index, uri in enumerate(dataset.cycle(uris, frames_per_job, start=number))
        ]
        new_frames += [
            frames.NewFrame(newcomer_video, index, uri, project_id=NEWCOMER_PROJECT)
            for index, uri in enumerate(dataset.cycle(uris, frames_per_job))
        ]
        frames.insert(connection, new_frames)
        with connection.transaction():
            queue.enqueue_many(connection, backlog_videos, model=model)

        with make_worker() as loop:
            thread = threading.Thread(target=loop.run, name="bench-fairness", daemon=True)
            thread.start()
            try:
                _wait(
                    lambda: _succeeded(connection, backlog_videos) >= settle,
                    f"{settle} backlog jobs to finish",
                )
                newcomer = queue.enqueue(connection, newcomer_video, model=model, priority=0)
                if newcomer is None:
                    raise dataset.BenchError("the newcomer's job was not enqueued")
                _wait(
                    lambda: _jobs(connection, [newcomer_video])[0]["finished"] is not None,
                    "the newcomer's job to finish",
                )
            finally:
                loop.shutdown.set()
                thread.join()
        jobs = _jobs(connection, [*backlog_videos, newcomer_video])
        for job in jobs:  # what is left of the backlog must not run in later scenarios
            if job["status"] in ("queued", "running"):
                queue.cancel(connection, job["id"])
    return _result(jobs, newcomer_video, frames_per_job, backlog)


def _result(
    jobs: list[dict[str, Any]], newcomer_video: str, frames_per_job: int, backlog: int
) -> Result:
    [newcomer] = [job for job in jobs if job["video_id"] == newcomer_video]
    if newcomer["status"] != "succeeded":
        raise dataset.BenchError(f"the newcomer's job ended {newcomer['status']}")
    finished = [
        job for job in jobs if job["video_id"] != newcomer_video and job["status"] == "succeeded"
    ]
    if not finished:
        raise dataset.BenchError("no backlog job finished")
    run_seconds = sum(job["finished"] - job["started"] for job in finished) / len(finished)
    wait = newcomer["started"] - newcomer["created"]
    claimed = sum(
        1
        for job in jobs
        if job["video_id"] != newcomer_video
        and job["started"] is not None
        and newcomer["created"] <= job["started"] < newcomer["started"]
    )
    return Result(
        ratio=wait / run_seconds,
        start_wait_seconds=wait,
        backlog_job_seconds=run_seconds,
        backlog_jobs=backlog,
        backlog_jobs_finished=len(finished),
        claimed_while_waiting=claimed,
        frames_per_job=frames_per_job,
        newcomer_total_seconds=newcomer["finished"] - newcomer["created"],
    )


def _jobs(connection: psycopg.Connection[Any], video_ids: list[str]) -> list[dict[str, Any]]:
    return list(
        connection.execute(db.queries()["bench_fair_jobs"], {"video_ids": video_ids}).fetchall()
    )


def _succeeded(connection: psycopg.Connection[Any], video_ids: list[str]) -> int:
    return sum(1 for job in _jobs(connection, video_ids) if job["status"] == "succeeded")


def _wait(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise dataset.BenchError(f"fairness: timed out waiting for {what}")
        time.sleep(POLL_SECONDS)
