"""The job queue: the one gateway to argus.embedding_jobs (claim, fence, finish)."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import random
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import psycopg

from argus_embedder import db, errors
from argus_embedder.gateways import counting

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 600.0
# Each try of a requeue that loses the race with an enqueue absorbs that enqueue, so a
# second try almost always suffices; the bound only stops a pathological loop.
REQUEUE_TRIES = 5


class Claim(NamedTuple):
    """One claim of a job: its id and that claim's lease token.

    A job cancelled and retried while a worker still streams it is claimed again
    under the same id, so whatever a claim owns (its rows, its lease, its ending)
    is keyed by both.
    """

    job_id: int
    lease_token: uuid.UUID


@dataclasses.dataclass(frozen=True)
class Job:
    """A claimed job: what the worker needs, plus its fencing token."""

    id: int
    video_id: str
    model: str
    attempts: int
    max_attempts: int
    lease_token: uuid.UUID
    queue_wait_seconds: float
    failures: int = 0  # errors it had when claimed (errors_total; the history is trimmed)

    @property
    def claim(self) -> Claim:
        return Claim(self.id, self.lease_token)


@dataclasses.dataclass(frozen=True)
class Frame:
    id: int
    image_uri: str


STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "cancelled")
WAITING_SAMPLE = 1000  # (video, model) pairs whose frames are counted exactly; more: scaled


@dataclasses.dataclass(frozen=True)
class QueueStats:
    jobs: dict[str, int]
    oldest_queued_seconds: float | None
    estimated: frozenset[str] = frozenset()  # the states whose count is the planner's


@dataclasses.dataclass(frozen=True)
class RunningJob:
    """A running job as status shows it, with what it wrote in its last minute."""

    id: int
    video_id: str
    model: str
    worker_id: str | None
    attempts: int
    frames_total: int | None
    frames_done: int
    frames_failed: int
    running_seconds: float | None
    lease_left_seconds: float | None
    device: str | None
    recent_frames: int
    recent_seconds: float | None


# A claim told "busy" (its lanes held by other claimers) tries again, waiting for
# the lane. Bounded: a lane holder commits within milliseconds, so many in a row
# means contention no retry here will fix; the caller polls again later.
_BUSY_RETRIES = 100


def backoff_seconds(attempt: int, *, base: float = 2.0, cap: float = MAX_BACKOFF_SECONDS) -> float:
    """Exponential backoff with jitter: uniform in [0.5, 1] of base * 2^(attempt-1), capped."""
    # A float overflows past 2^1023; any cap in use is reached long before 2^64.
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 64))
    return float(ceiling * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto


class Queue:
    """Job operations for one worker (`worker_id`, `model`) over a connection it lends."""

    def __init__(self, *, model: str, worker_id: str, lease_seconds: float) -> None:
        self.model = model
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds

    def claim(self, connection: psycopg.Connection[Any], limit: int = 1) -> list[Job]:
        """Claim up to `limit` jobs (and reclaim expired leases) in one statement.

        Projects take turns (argus.claim_jobs). An empty list means nothing was
        claimable: a statement that only moved expired jobs out of attempts to failed
        is run again, and so is one that found every claimable lane held by another
        claimer ("busy"), this time waiting for the first lane rather than skipping it.
        """
        wait = False
        busy = 0
        while True:
            try:
                rows = self._claim_rows(connection, limit, wait=wait)
            except psycopg.errors.UniqueViolation as error:
                # Twin jobs of one (video, model) enqueued under NULL and an explicit
                # model, claimed at once by two workers: the one-running index stops
                # the second. Nothing is lost; the twin runs after the first finishes.
                log.info("claim skipped a twin job: %s", errors.first_line(error))
                return []
            if len(rows) == 1 and rows[0]["busy"]:
                busy += 1
                if busy > _BUSY_RETRIES:
                    return []
                wait = True
                continue
            jobs = self._jobs(rows)
            # Each such pass fails at least one job for good, so this ends.
            if jobs or not rows:
                return jobs

    def _claim_rows(
        self, connection: psycopg.Connection[Any], limit: int, *, wait: bool
    ) -> list[dict[str, Any]]:
        with connection.transaction():
            _commit_lazily(connection)
            return connection.execute(
                db.queries()["claim_jobs"],
                {
                    "model": self.model,
                    "limit": limit,
                    "worker_id": self.worker_id,
                    "lease_seconds": self.lease_seconds,
                    "wait": wait,
                },
            ).fetchall()

    def _jobs(self, rows: list[dict[str, Any]]) -> list[Job]:
        jobs = []
        for row in rows:
            if row["status"] == "failed":
                log.warning(
                    "job %s failed: lease expired and %s/%s attempts used",
                    row["id"],
                    row["attempts"],
                    row["max_attempts"],
                )
                continue
            jobs.append(_job(row))
        return jobs

    def missing_frames(
        self, connection: psycopg.Connection[Any], jobs: Sequence[Job]
    ) -> dict[int, list[Frame]]:
        """Each held job's frames still without a row for its model, in one statement.

        A job whose lease is gone is absent from the result. The listing writes the
        job's progress counts, which the worker's later writes add to, and it is never
        redone: so it commits durably, and its WAL flush makes the claim before it
        durable too.
        """
        missing: dict[int, list[Frame]] = {}
        for model in {job.model for job in jobs}:
            of_model = [job for job in jobs if job.model == model]
            with connection.transaction():
                cursor = connection.execute(
                    db.queries()["list_missing_frames"],
                    {
                        **fences(of_model),
                        "video_ids": [job.video_id for job in of_model],
                        "model": model,
                    },
                )
                for row in cursor:
                    frames = missing.setdefault(row["job_id"], [])
                    if row["id"] is not None:
                        frames.append(Frame(id=row["id"], image_uri=row["image_uri"]))
        return missing

    def renew(self, connection: psycopg.Connection[Any], jobs: list[Job]) -> set[Claim]:
        """Extend the leases of `jobs`; returns the claims still held (others were lost)."""
        if not jobs:
            return set()
        with connection.transaction():
            _commit_lazily(connection)
            rows = connection.execute(
                db.queries()["renew_leases"],
                {**fences(jobs), "lease_seconds": self.lease_seconds},
            ).fetchall()
        return {Claim(row["id"], row["lease_token"]) for row in rows}

    def complete(self, connection: psycopg.Connection[Any], job: Job) -> float | None:
        """Mark succeeded; returns the job's run time in seconds, None if the lease was lost."""
        with connection.transaction():
            row = connection.execute(db.queries()["complete_job"], _fence(job)).fetchone()
        if row is None:
            return None
        duration: datetime.timedelta = row["duration"]
        return duration.total_seconds()

    def complete_many(self, connection: psycopg.Connection[Any], jobs: list[Job]) -> set[int]:
        """Mark several jobs succeeded in one statement; returns the ids still held."""
        with connection.transaction():
            return complete_jobs(connection, jobs)

    def fail(
        self,
        connection: psycopg.Connection[Any],
        job: Job,
        error: str,
        *,
        transient: bool = False,
    ) -> str | None:
        """Record a job-level failure: queued again with backoff, or failed when out of
        attempts. A `transient` failure gives the attempt back (an outage is not the
        job's fault) and its backoff grows with the error history. Returns the new
        status, None if the lease was lost."""
        row = self._requeue(
            connection,
            job,
            "fail_job",
            {
                **_fence(job),
                "error": error[:2000],
                "transient": transient,
                "backoff_seconds": backoff_seconds(job.failures + 1 if transient else job.attempts),
            },
            transient=transient,
        )
        return None if row is None else str(row["status"])

    def release(self, connection: psycopg.Connection[Any], job: Job) -> bool:
        """Give the lease back without burning an attempt (graceful shutdown)."""
        row = self._requeue(connection, job, "release_job", _fence(job), transient=True)
        return row is not None

    def _requeue(
        self,
        connection: psycopg.Connection[Any],
        job: Job,
        statement: str,
        parameters: dict[str, Any],
        *,
        transient: bool,
    ) -> dict[str, Any] | None:
        """Fold a queued duplicate into `job`, then run `statement`, which may set it back
        to queued, in one transaction; returns the statement's row.

        The frame stage can commit a new duplicate between the two statements: the
        second then violates the one-queued-job index. The next try absorbs it.
        """
        tries = 1
        while True:
            try:
                with connection.transaction():
                    self._absorb_duplicate(connection, job, transient=transient)
                    row: dict[str, Any] | None = connection.execute(
                        db.queries()[statement], parameters
                    ).fetchone()
                    return row
            except psycopg.errors.UniqueViolation as error:
                if tries >= REQUEUE_TRIES:
                    raise
                tries += 1
                log.info(
                    "job %s: a duplicate was enqueued while it went back to queued; "
                    "absorbing it (%s)",
                    job.id,
                    str(error).partition("\n")[0],
                )

    def _absorb_duplicate(
        self, connection: psycopg.Connection[Any], job: Job, *, transient: bool
    ) -> None:
        """Fold a queued duplicate into `job` if it goes back to queued (see the block)."""
        connection.execute(
            db.queries()["absorb_queued_duplicate"],
            {**_fence(job), "model": job.model, "transient": transient},
        )


def _fence(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "lease_token": job.lease_token}


def _job(row: dict[str, Any]) -> Job:
    wait: datetime.timedelta = row["queue_wait"]
    return Job(
        id=row["id"],
        video_id=row["video_id"],
        model=row["model"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        lease_token=row["lease_token"],
        queue_wait_seconds=max(wait.total_seconds(), 0.0),
        failures=row["failures"],
    )


# --- operator actions and read-only views ------------------------------------


def fences(jobs: Sequence[Job]) -> dict[str, list[Any]]:
    """The parallel `job_ids` / `lease_tokens` arrays every many-job statement fences on."""
    return {"job_ids": [job.id for job in jobs], "lease_tokens": [job.lease_token for job in jobs]}


def _commit_lazily(connection: psycopg.Connection[Any]) -> None:
    """This transaction's commit need not wait for its WAL flush.

    Only for bookkeeping whose loss in a server crash is harmless. A lost claim puts the
    job back to queued; the claimer learns it at once, since its listing (committed
    durably, right after the claim, and flushing the WAL up to it) then finds the lease
    gone, or fails on the crashed server before any frame is streamed. A lost renewal is
    redone by the next one. Listings, writes of vectors and completions stay durable.
    """
    connection.execute(db.queries()["commit_lazily"])


def complete_jobs(connection: psycopg.Connection[Any], jobs: Sequence[Job]) -> set[int]:
    """Mark `jobs` succeeded in one fenced statement, inside the caller's transaction;
    returns the ids that were still held."""
    if not jobs:
        return set()
    rows = connection.execute(db.queries()["complete_jobs"], fences(jobs)).fetchall()
    return {row["id"] for row in rows}


def enqueue(
    connection: psycopg.Connection[Any], video_id: str, *, model: str | None, priority: int
) -> int | None:
    """Insert a job; returns its id, or None when a queued job already covers it."""
    row = connection.execute(
        db.queries()["enqueue_job"],
        {"video_id": video_id, "model": model, "priority": priority},
    ).fetchone()
    return None if row is None else row["id"]


def enqueue_many(
    connection: psycopg.Connection[Any], video_ids: Sequence[str], *, model: str | None
) -> None:
    """Insert a job for each video in one pipelined round trip (the bench's set-up)."""
    with connection.cursor() as cursor:
        cursor.executemany(
            db.queries()["enqueue_job"],
            [{"video_id": video_id, "model": model, "priority": 0} for video_id in video_ids],
        )


def video_exists(connection: psycopg.Connection[Any], video_id: str) -> bool:
    row = connection.execute(db.queries()["video_has_frames"], {"video_id": video_id}).fetchone()
    return bool(row and row["found"])


def cancel(connection: psycopg.Connection[Any], job_id: int) -> bool:
    return connection.execute(db.queries()["cancel_job"], {"job_id": job_id}).fetchone() is not None


def retry(connection: psycopg.Connection[Any], job_id: int) -> bool:
    return connection.execute(db.queries()["retry_job"], {"job_id": job_id}).fetchone() is not None


def job_status(connection: psycopg.Connection[Any], job_id: int) -> str | None:
    row = connection.execute(db.queries()["job_status"], {"job_id": job_id}).fetchone()
    return None if row is None else str(row["status"])


def stats(
    connection: psycopg.Connection[Any],
    *,
    cap: int | None = None,
    exact_rows: int | None = None,
) -> QueueStats:
    """Jobs per state and the oldest claimable queued job's age, at a cost that does not
    grow with the table: a table the planner puts at or below `exact_rows` is counted;
    a larger one has its queued and running jobs counted from their partial indexes up
    to `cap` and its finished jobs (which pile up forever) estimated by the planner."""
    cap = counting.COUNT_CAP if cap is None else cap
    exact_rows = counting.EXACT_ROWS if exact_rows is None else exact_rows
    q = db.queries()
    counts = {state: 0 for state in STATES}
    estimated: set[str] = set()
    if counting.planned_rows(connection, "jobs_rows_estimate") <= exact_rows:
        for row in connection.execute(q["queue_counts"]):
            counts[row["state"]] = int(row["jobs"])
    else:
        active = connection.execute(q["queue_active_counts"], {"cap": cap}).fetchone()
        assert active is not None
        for state in ("queued", "running"):
            count = counting.capped(
                int(active[state]),
                counting.planned_rows(connection, "jobs_state_estimate", state=state)
                if active[state] > cap
                else 0,
                cap,
            )
            counts[state] = count.value
            if count.estimated:
                estimated.add(state)
        for state in FINISHED_STATES:
            counts[state] = counting.planned_rows(connection, "jobs_state_estimate", state=state)
            estimated.add(state)
    oldest = connection.execute(q["oldest_queued"]).fetchone()
    age = None if oldest is None else oldest["age_seconds"]
    return QueueStats(jobs=counts, oldest_queued_seconds=age, estimated=frozenset(estimated))


def frames_waiting(
    connection: psycopg.Connection[Any],
    model: str | None,
    *,
    queued: int,
    sample: int | None = None,
    cap: int | None = None,
) -> counting.Count:
    """Frames still to embed for every (video, model) with a queued or running job.

    `queued` is the queue's count (`stats`, maybe an estimate): with more than `cap`
    queued jobs only `cap` are listed, and the pairs beyond them are taken from it.
    Counted exactly on at most `sample` (default WAITING_SAMPLE) random pairs, scaled up when
    there are more: then it is an estimate."""
    cap = counting.COUNT_CAP if cap is None else cap
    if sample is None:
        sample = WAITING_SAMPLE
    row = connection.execute(
        db.queries()["frames_waiting"], {"model": model, "sample": sample, "cap": cap}
    ).fetchone()
    if row is None or not row["sampled"]:
        return counting.Count(0)
    listed, pairs = int(row["queued_listed"]), int(row["pairs"])
    sampled, frames = int(row["sampled"]), int(row["frames"])
    if listed >= cap:
        pairs += max(queued - listed, 0)
    if sampled >= pairs:
        return counting.Count(frames)
    return counting.Count(round(frames * pairs / sampled), estimated=True)


def running_progress(connection: psycopg.Connection[Any]) -> list[RunningJob]:
    """Running jobs, oldest first, with their worker's device and their last minute's writes."""
    fields = [field.name for field in dataclasses.fields(RunningJob)]
    return [
        RunningJob(**{name: row[name] for name in fields})
        for row in connection.execute(db.queries()["running_progress"])
    ]


def enqueue_missing(
    connection: psycopg.Connection[Any],
    video_ids: Sequence[str],
    *,
    model: str,
    configured_model: str,
    priority: int,
    respect_failures: bool,
    settle_seconds: float = 0.0,
) -> list[str]:
    """Enqueue a job naming `model` for each video not covered yet; returns those videos.

    A queued or running job covers the video if it names `model`, or names no
    model while `model` is `configured_model` (the daemons' own). With
    `respect_failures`, a video whose latest finished job failed or was
    cancelled waits for a newer frame or an operator's retry. A video with a frame
    younger than `settle_seconds` waits too (its frame stage is still at it).
    """
    if not video_ids:
        return []
    rows = connection.execute(
        db.queries()["enqueue_missing"],
        {
            "video_ids": list(video_ids),
            "model": model,
            "configured_model": configured_model,
            "priority": priority,
            "respect_failures": respect_failures,
            "settle_seconds": settle_seconds,
        },
    ).fetchall()
    return [row["video_id"] for row in rows]


def record_progress(
    connection: psycopg.Connection[Any],
    jobs: Sequence[Job],
    *,
    done: Sequence[int],
    failed: Sequence[int],
    lease_seconds: float,
) -> set[Claim]:
    """Add a batch's frames to each job's progress in one fenced statement, inside the
    caller's write transaction; returns the claims whose lease is still ours."""
    if not jobs:
        return set()
    rows = connection.execute(
        db.queries()["record_progress"],
        {
            **fences(jobs),
            "done": list(done),
            "failed": list(failed),
            "lease_seconds": lease_seconds,
        },
    ).fetchall()
    return {Claim(row["id"], row["lease_token"]) for row in rows}


def cancel_queued_of_model(connection: psycopg.Connection[Any], model: str) -> int:
    """Cancel the queued jobs naming `model` (it is being pruned); returns how many."""
    return len(
        connection.execute(db.queries()["cancel_queued_model_jobs"], {"model": model}).fetchall()
    )
