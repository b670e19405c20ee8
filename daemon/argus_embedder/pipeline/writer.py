"""The writer: each batch's rows and progress in one fenced transaction, on its own thread.

One write is in flight while the next batch is on the model. When the database
refuses a row (a constraint, a value it rejects), the batch is written again
claim by claim, so the innocent claims' rows land and only the guilty claim is
reported, with the frame named when one alone is refused: the worker fails
that claim's attempt. Such an error is one job's data, never the daemon's.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Any

import psycopg
import psycopg_pool

from argus_embedder import errors, metrics
from argus_embedder.gateways import index, store
from argus_embedder.pipeline.failed_frames import FailedFrames

log = logging.getLogger(__name__)

# What the database says of rows it will not take: a constraint (a vanished frame's
# foreign key; "no partition … found for row" is a CheckViolation) or a value it
# rejects ("bigint out of range" for a frame id near 2^63).
REFUSED = (psycopg.errors.IntegrityError, psycopg.errors.DataError)
_WRITE = metrics.STAGE_DURATION.labels(stage="write")


class Writer:
    """Writes batches on one thread, one at a time. Use as a context manager."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool[Any],
        segments: index.Segments,
        *,
        preprocessing: str,
        lease_seconds: float,
        failed_frames: FailedFrames | None = None,
    ) -> None:
        self._pool = pool
        self._failed_frames = failed_frames or FailedFrames()
        self._segments = segments
        self._preprocessing = preprocessing
        self._lease_seconds = lease_seconds
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="argus-write")
        self._pending: concurrent.futures.Future[store.Outcome] | None = None

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, writes: list[store.JobWrite]) -> None:
        """Start writing `writes`; the previous write must have been settled."""
        assert self._pending is None, "settle the write in flight first"
        if writes:
            self._pending = self._executor.submit(self._write, writes)

    def settle(self) -> store.Outcome | None:
        """Wait for the write in flight (None when there is none) and return what it did."""
        pending, self._pending = self._pending, None
        return None if pending is None else pending.result()

    def abandon(self) -> None:
        """After an error in the loop: wait for the write in flight, whatever it did."""
        pending, self._pending = self._pending, None
        if pending is not None:
            concurrent.futures.wait([pending])

    def _write(self, writes: list[store.JobWrite]) -> store.Outcome:
        started = time.perf_counter()
        with self._pool.connection() as connection:
            outcome = self._write_isolating_refusals(connection, writes)
        _WRITE.observe(time.perf_counter() - started)
        for job_write in writes:
            claim = job_write.job.claim
            if claim in outcome.lost or claim in outcome.refused:
                continue
            failed = job_write.failed
            for result in job_write.results:
                if result.error is not None:
                    self._failed_frames.record(job_write.job, result.frame_id, result.error)
            metrics.FRAMES_PROCESSED.labels(outcome="failed").inc(failed)
            metrics.FRAMES_PROCESSED.labels(outcome="embedded").inc(len(job_write.results) - failed)
        return outcome

    def _write_isolating_refusals(
        self, connection: psycopg.Connection[Any], writes: list[store.JobWrite]
    ) -> store.Outcome:
        try:
            return self._write_rows(connection, writes)
        except REFUSED as error:
            if len(writes) == 1:
                return self._refused(connection, writes[0], error)
        outcome = store.Outcome()
        for job_write in writes:
            try:
                outcome.add(self._write_rows(connection, [job_write]))
            except REFUSED as error:
                outcome.add(self._refused(connection, job_write, error))
        return outcome

    def _write_rows(
        self, connection: psycopg.Connection[Any], writes: list[store.JobWrite]
    ) -> store.Outcome:
        self._segments.ensure(
            connection, (result.frame_id for write in writes for result in write.results)
        )
        return store.write(
            connection,
            writes,
            preprocessing=self._preprocessing,
            lease_seconds=self._lease_seconds,
        )

    def _refused(
        self, connection: psycopg.Connection[Any], job_write: store.JobWrite, error: Exception
    ) -> store.Outcome:
        """The outcome of a claim whose rows the database refused, naming the frame when
        one alone is refused (each tried in a transaction that is rolled back)."""
        reason = errors.describe(error)
        for result in job_write.results:
            try:
                # Segments are created for real: a rolled-back one would stay in the cache.
                self._segments.ensure(connection, [result.frame_id])
                with connection.transaction(force_rollback=True):
                    store.write(
                        connection,
                        [store.JobWrite(job_write.job, [result])],
                        preprocessing=self._preprocessing,
                        lease_seconds=self._lease_seconds,
                    )
            except REFUSED as frame_error:
                reason = (
                    f"frame {result.frame_id} cannot be written: {errors.describe(frame_error)}"
                )
                break
        return store.Outcome(refused={job_write.job.claim: f"write refused: {reason}"})
