"""Vector writes: a batch of frame rows plus each job's progress, in one fenced transaction."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from argus_embedder import db
from argus_embedder.gateways import counting, queue
from argus_embedder.gateways.queue import Job

log = logging.getLogger(__name__)

_COPY_TYPES = ["int8", "text", "vector", "text", "text"]


@dataclasses.dataclass(frozen=True)
class FrameResult:
    """One finished frame: a unit vector, or the reason it can never succeed."""

    frame_id: int
    vector: npt.NDArray[np.float32] | None = None
    error: str | None = None


def embedded(frame_id: int, vector: npt.NDArray[np.float32]) -> FrameResult:
    """The frame's vector, or an error row if the model gave a non-finite one.

    fp16/bf16 inference can overflow to inf or NaN; such a vector is meaningless, and
    pgvector rejects it, which would fail the whole batch's write.
    """
    if np.isfinite(vector).all():
        return FrameResult(frame_id, vector=vector)
    log.warning("frame %s: the model gave a non-finite vector; recorded as an error", frame_id)
    return FrameResult(frame_id, error="the model gave a non-finite vector (NaN or inf)")


@dataclasses.dataclass(frozen=True)
class JobWrite:
    """The rows of one batch that belong to one job; `complete` when they are its last."""

    job: Job
    results: Sequence[FrameResult]
    complete: bool = False

    @property
    def failed(self) -> int:
        return sum(1 for result in self.results if result.error is not None)


@dataclasses.dataclass
class Outcome:
    """What a write did: jobs whose lease was gone, jobs it completed, and jobs whose
    rows the database refused (with why), which the caller fails."""

    lost: set[queue.Claim] = dataclasses.field(default_factory=set)
    completed: set[queue.Claim] = dataclasses.field(default_factory=set)
    refused: dict[queue.Claim, str] = dataclasses.field(default_factory=dict)

    def add(self, other: Outcome) -> None:
        self.lost |= other.lost
        self.completed |= other.completed
        self.refused.update(other.refused)


def write(
    connection: psycopg.Connection[Any],
    writes: Sequence[JobWrite],
    *,
    preprocessing: str,
    lease_seconds: float,
) -> Outcome:
    """Commit the rows and progress of `writes` in one transaction.

    Each job's progress update is fenced by its lease token; rows of a job whose
    lease is gone (cancelled, reclaimed) are not written. A job whose last rows
    these are is marked succeeded in the same transaction.
    """
    outcome = Outcome()
    with connection.transaction():
        still_held = _record_progress(connection, writes, lease_seconds)
        held = [job_write for job_write in writes if job_write.job.claim in still_held]
        outcome.lost = {job_write.job.claim for job_write in writes} - still_held
        try:
            with connection.transaction():  # savepoint: a conflict must not void the fence
                _copy(connection, held, preprocessing)
        except psycopg.errors.UniqueViolation:
            # Only reachable if rows appeared outside the queue's fencing (a manual
            # insert): those frames are finished either way, so skip them.
            held = _without_existing(connection, held)
            _copy(connection, held, preprocessing)
        completing = [job_write.job for job_write in held if job_write.complete]
        # Held claims are each their job's only live one: the returned ids name them.
        completed = queue.complete_jobs(connection, completing)
        outcome.completed = {job.claim for job in completing if job.id in completed}
    return outcome


def _record_progress(
    connection: psycopg.Connection[Any], writes: Sequence[JobWrite], lease_seconds: float
) -> set[queue.Claim]:
    return queue.record_progress(
        connection,
        [job_write.job for job_write in writes],
        done=[len(job_write.results) for job_write in writes],
        failed=[job_write.failed for job_write in writes],
        lease_seconds=lease_seconds,
    )


def _copy(
    connection: psycopg.Connection[Any], writes: Sequence[JobWrite], preprocessing: str
) -> None:
    with connection.cursor().copy(db.queries()["copy_embeddings"]) as copy:
        copy.set_types(_COPY_TYPES)
        for job_write in writes:
            model = job_write.job.model
            for result in job_write.results:
                if result.vector is not None:
                    copy.write_row((result.frame_id, model, result.vector, None, preprocessing))
                else:
                    copy.write_row((result.frame_id, model, None, result.error, None))


def _without_existing(
    connection: psycopg.Connection[Any], writes: Sequence[JobWrite]
) -> list[JobWrite]:
    trimmed = []
    for job_write in writes:
        existing = {
            row["frame_id"]
            for row in connection.execute(
                db.queries()["existing_embeddings"],
                {
                    "model": job_write.job.model,
                    "frame_ids": [result.frame_id for result in job_write.results],
                },
            )
        }
        kept = [result for result in job_write.results if result.frame_id not in existing]
        log.warning(
            "job %s: %d frames already had rows; skipped",
            job_write.job.id,
            len(job_write.results) - len(kept),
        )
        trimmed.append(JobWrite(job_write.job, kept, job_write.complete))
    return trimmed


@dataclasses.dataclass(frozen=True)
class ModelRows:
    """A model's rows (a vector or an error) and, of those, its error rows."""

    with_row: counting.Count
    failed: counting.Count


def model_rows(
    connection: psycopg.Connection[Any],
    model: str,
    *,
    exact_rows: int | None = None,
    cap: int | None = None,
) -> ModelRows:
    """`model`'s rows: counted where the planner puts them at or below `exact_rows`, else
    its estimate; error rows counted from their partial index up to `cap`, else estimated."""
    cap = counting.COUNT_CAP if cap is None else cap
    exact_rows = counting.EXACT_ROWS if exact_rows is None else exact_rows
    q = db.queries()
    estimate = counting.planned_rows(connection, "model_rows_estimate", model=model)
    if estimate > exact_rows:
        with_row = counting.Count(estimate, estimated=True)
    else:
        row = connection.execute(q["model_rows"], {"model": model}).fetchone()
        assert row is not None
        with_row = counting.Count(int(row["with_row"]))
    row = connection.execute(q["model_failed_rows"], {"model": model, "cap": cap}).fetchone()
    assert row is not None
    failed = int(row["failed"])
    over = failed > cap
    return ModelRows(
        with_row=with_row,
        failed=counting.capped(
            failed,
            counting.planned_rows(connection, "model_failed_estimate", model=model) if over else 0,
            cap,
        ),
    )
