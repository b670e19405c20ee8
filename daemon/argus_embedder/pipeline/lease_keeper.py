"""The lease keeper: renews every held claim's lease, and ends the claims found lost.

It runs as a supervised service beside the loop. A database error in a round
is logged and the next round tries again; any other error is retried with
backoff, and a keeper that keeps failing dies: then the worker stops claiming
(every lease it held would lapse mid-stream) and /livez fails, so systemd
restarts the daemon.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import psycopg_pool

from argus_embedder import errors, lifecycle
from argus_embedder.gateways.queue import Queue
from argus_embedder.pipeline.endings import Endings
from argus_embedder.pipeline.ledger import Ledger, Outcome, Phase

log = logging.getLogger(__name__)

MAX_FAILURES = 3  # unexpected errors in a row before the keeper gives up (leases lapse anyway)


def service(
    pool: psycopg_pool.ConnectionPool[Any],
    queue: Queue,
    ledger: Ledger,
    endings: Endings,
    *,
    interval: float,
) -> lifecycle.Service:
    """The keeper as a lifecycle service (not started yet)."""

    def renew() -> None:
        jobs = ledger.held()
        if not jobs:
            return
        try:
            with pool.connection(timeout=interval) as connection:
                held = queue.renew(connection, jobs)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
            # An outage: the loop sees it too; the leases hold until they expire.
            log.warning("lease renewal failed: %s", errors.first_line(error))
            return
        for job in jobs:
            if job.claim in held:
                continue
            entry = ledger.get(job.claim)
            if entry is not None and entry.phase is Phase.WRITING:
                # Its last write is in flight and may just have completed it: the
                # write's own fence says which (completed, or lost).
                continue
            log.warning("job %s: lease lost (cancelled or reclaimed)", job.id)
            endings.ended(job.claim, Outcome.LOST, "lease lost")

    return lifecycle.Service(
        "lease-keeper", renew, interval=interval, first_delay=interval, max_failures=MAX_FAILURES
    )
