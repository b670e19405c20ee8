"""How claims end: the queue statement, the ledger's transition, the metric and the log line.

Every ending goes through here, from whichever thread sees it (the loop, the
writer's settlement, the lease keeper), and the ledger makes sure each claim is
counted once however many of them notice.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import psycopg_pool

from argus_embedder import errors, metrics
from argus_embedder.gateways import store
from argus_embedder.gateways.queue import Claim, Job, Queue
from argus_embedder.pipeline.failed_frames import FailedFrames
from argus_embedder.pipeline.ledger import Ledger, Outcome

log = logging.getLogger(__name__)


class Endings:
    """Ends the ledger's claims, in the database where that takes a statement."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool[Any],
        queue: Queue,
        ledger: Ledger,
        failed_frames: FailedFrames | None = None,
    ) -> None:
        self._pool = pool
        self.failed_frames = failed_frames or FailedFrames()
        self._queue = queue
        self._ledger = ledger

    def ended(self, claim: Claim, outcome: Outcome, why: str = "") -> None:
        """The claim ended in a way the database already knows (or need not be told)."""
        entry = self._ledger.finish(claim, outcome)
        if entry is None:
            return
        self.failed_frames.ended(entry.job)
        metrics.JOBS_COMPLETED.labels(outcome=outcome.value).inc()
        if outcome is Outcome.SUCCEEDED:
            metrics.JOB_DURATION.observe(self._ledger.clock() - entry.claimed_at)
            metrics.LAST_SUCCESS.set_to_current_time()
        log.info("job %s: %s%s", claim.job_id, outcome.value, f" ({why})" if why else "")

    def fail(self, job: Job, error: str, *, transient: bool = False) -> None:
        """Fail the claim's attempt: queued again with backoff, or failed for good.

        A `transient` failure (an outage, not the job's fault) gives the attempt back.
        """
        if not self._ledger.live(job.claim):
            return
        log.warning("job %s: %s", job.id, error)
        with self._pool.connection() as connection:
            status = self._queue.fail(connection, job, error, transient=transient)
        if status is None:
            self.ended(job.claim, Outcome.LOST, "its lease was gone when it failed")
        else:
            self.ended(job.claim, Outcome.FAILED if status == "failed" else Outcome.RETRIED)

    def written(self, outcome: store.Outcome) -> None:
        """A write settled: its refused claims fail, its lost ones end, its last rows
        complete their jobs."""
        for claim, error in outcome.refused.items():
            entry = self._ledger.get(claim)
            if entry is not None:
                self.fail(entry.job, error)
        for claim in outcome.lost:
            self.ended(claim, Outcome.LOST, "lease lost")
        for claim in outcome.completed:
            self.ended(claim, Outcome.SUCCEEDED)

    def settle_held(self, failure: BaseException | None) -> None:
        """The stream stopped: end every claim still held.

        After a shutdown or a database outage they are released without an attempt;
        after an unexpected error, which may be a held job's own doing, they are failed
        with the attempt counted, so a job that always causes one ends `failed` after
        max_attempts instead of taking the daemon round forever.
        """
        for entry in self._ledger.entries():
            job = entry.job
            try:
                if failure is not None:
                    self.fail(job, f"stopped by an unexpected error: {errors.describe(failure)}")
                    continue
                with self._pool.connection() as connection:
                    released = self._queue.release(connection, job)
            except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
                # The database is gone: the lease expires and the job is reclaimed.
                log.warning("job %s: could not settle (%s)", job.id, errors.first_line(error))
                released = False
            self.ended(job.claim, Outcome.RELEASED if released else Outcome.LOST)
