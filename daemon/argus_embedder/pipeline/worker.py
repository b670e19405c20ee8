"""The daemon loop: claim → list frames → (fetch, decode) → embed → fenced write → finish.

`Worker` composes the pipeline's parts, a module each: the ledger (every held
claim, the only lock), the stream (frames across jobs, claiming more as it runs
low), preparing (fetch and decode beside the model), inference, the writer (one
fenced write in flight on its own thread), the lease keeper (a supervised
service) and the wake-up (LISTEN/poll while idle). `run_once()` steps exactly
one batch, so tests drive the loop deterministically; `run()` loops it.
Everything in flight is bounded, so memory stays flat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool

from argus_embedder import db, errors, lifecycle, metrics
from argus_embedder.gateways import index
from argus_embedder.gateways.queue import Queue
from argus_embedder.pipeline import inference, lease_keeper, preparing
from argus_embedder.pipeline.endings import Endings
from argus_embedder.pipeline.inference import EmbedderLike
from argus_embedder.pipeline.ledger import Ledger
from argus_embedder.pipeline.storage import Storage
from argus_embedder.pipeline.stream import Item, Stream
from argus_embedder.pipeline.wakeup import Wakeup
from argus_embedder.pipeline.writer import Writer
from argus_embedder.settings import Settings

log = logging.getLogger(__name__)

_DB_RETRY_MAX = 30.0
_UNAVAILABLE = (psycopg.OperationalError, psycopg_pool.PoolTimeout)  # the database, not the data
_EMPTY_CLAIM_BACKOFF = 1.0  # seconds before topping up again after an empty claim


class Worker:
    """One daemon's loop. Use as a context manager; `run_once()` steps it in tests."""

    def __init__(
        self,
        settings: Settings,
        url: str,
        embedder: EmbedderLike,
        *,
        storage: Storage | None = None,
        shutdown: threading.Event | None = None,
        on_beat: Callable[[], None] | None = None,
        threads: int | None = None,
        decode_processes: int = 0,
    ) -> None:
        self.settings = settings
        self.url = url
        self.embedder = embedder
        self.storage = storage or Storage(settings)
        self.shutdown = shutdown or threading.Event()
        self.queue = Queue(
            model=embedder.model, worker_id=settings.worker_id, lease_seconds=settings.lease_seconds
        )
        self.ledger = Ledger()
        self._on_beat = on_beat
        self._threads = threads or default_threads()
        self._decode_processes = decode_processes
        self._stack = contextlib.ExitStack()
        self._parts: _Parts | None = None
        self._next_top_up = 0.0
        self._keeper_reported = False

    # --- lifetime -------------------------------------------------------------

    def __enter__(self) -> Worker:
        stack = self._stack
        pool = stack.enter_context(
            db.pool(
                self.url,
                size=4,
                name="argus-worker",
                idle_in_transaction=self.settings.lease_seconds,
            )
        )
        preparer = preparing.for_embedder(
            self.storage, self.embedder, processes=self._decode_processes, threads=self._threads
        )
        stack.callback(preparer.close)
        with pool.connection() as connection:
            # Registers the model (its partition) unless `migrate --model` did.
            model = index.register(connection, self.embedder.model, self.embedder.dimension)
        endings = Endings(pool, self.queue, self.ledger)
        self._parts = _Parts(
            pool=pool,
            endings=endings,
            stream=Stream(
                pool,
                self.queue,
                self.ledger,
                endings,
                preparer,
                frames_per_job=self.embedder.batch_size,
            ),
            writer=stack.enter_context(
                Writer(
                    pool,
                    index.Segments(model),
                    preprocessing=self.embedder.preprocessing,
                    lease_seconds=self.settings.lease_seconds,
                    failed_frames=endings.failed_frames,
                )
            ),
            lease_keeper=stack.enter_context(
                lease_keeper.service(
                    pool,
                    self.queue,
                    self.ledger,
                    endings,
                    interval=self.settings.heartbeat_interval,
                )
            ),
            wakeup=stack.enter_context(
                Wakeup(
                    self.url,
                    poll_interval=self.settings.poll_interval,
                    shutdown=self.shutdown,
                    beat=self.beat,
                )
            ),
        )
        stack.callback(self._stop_stream, None)  # first out: nothing held survives the worker
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    @property
    def parts(self) -> _Parts:
        assert self._parts is not None, "use Worker as a context manager"
        return self._parts

    @property
    def pool(self) -> psycopg_pool.ConnectionPool[Any]:
        return self.parts.pool

    @property
    def keeper(self) -> lifecycle.Service:
        """Supervised: the daemon's /livez watches it."""
        return self.parts.lease_keeper

    @property
    def jobs_finished(self) -> int:
        return self.ledger.finished

    # --- the loop -------------------------------------------------------------

    def run(self, *, burst: bool = False) -> None:
        """Loop until shutdown (or, with `burst`, until nothing is claimable)."""
        delay = 1.0
        while not self.shutdown.is_set():
            self.beat()
            try:
                worked = self.run_once()
                delay = 1.0
            except Exception as error:
                if isinstance(error, _UNAVAILABLE):
                    metrics.DB_ERRORS.inc()
                    log.warning(
                        "database unavailable (%s); retrying in %.0fs",
                        errors.first_line(error),
                        delay,
                    )
                else:
                    # Exiting would make systemd restart the daemon into the same error,
                    # and every daemon of the fleet with it: the claims held are failed
                    # (their attempts counted), so the next round does other work.
                    log.exception("unexpected error in the loop; going on in %.0fs", delay)
                self._stop_stream(None if isinstance(error, _UNAVAILABLE) else error)
                self.shutdown.wait(delay)
                delay = min(delay * 2, _DB_RETRY_MAX)
                continue
            if worked:
                continue
            if burst:
                break
            self.parts.wakeup.wait()
        self._stop_stream(None)

    def run_once(self) -> bool:
        """Step one batch: top up the stream (claiming jobs if needed), prepare ahead,
        embed the batch, settle the previous write and start this one's. Returns False
        when there was nothing to do: no frames, nothing claimable, no write in flight."""
        size = max(1, self.embedder.batch_size)
        batch = self._next_batch(size)
        if not batch:
            return self._settle_write()
        self.parts.wakeup.busy()
        embedded = inference.embed_batch(self.embedder, batch)
        for failure in embedded.failures:
            self.parts.endings.fail(failure.job, failure.error, transient=failure.transient)
        self._settle_write()  # at most one write in flight
        self.parts.writer.submit(embedded.writes)
        self.beat()
        return True

    def beat(self) -> None:
        if self._on_beat is not None:
            self._on_beat()

    def _next_batch(self, size: int) -> list[Item]:
        """Take a batch; empty only when no live frame is buffered and none is claimable."""
        stream = self.parts.stream
        for force in (False, True):
            wanted = force or not len(stream) or time.monotonic() >= self._next_top_up
            if wanted and self._may_claim() and not stream.top_up(2 * size):
                self._next_top_up = time.monotonic() + _EMPTY_CLAIM_BACKOFF
            stream.prepare_ahead(3 * size)
            batch = stream.take(size)
            if batch:
                return batch
        return []

    def _may_claim(self) -> bool:
        """Not while shutting down, and not once the lease keeper is dead: every lease
        claimed then would lapse mid-stream."""
        if self.shutdown.is_set():
            return False
        failure = self.parts.lease_keeper.failure()
        if failure is None:
            return True
        if not self._keeper_reported:
            self._keeper_reported = True
            log.error("%s: no more jobs are claimed", failure)
        return False

    def _settle_write(self) -> bool:
        """Account for the write in flight, if any; False when there was none."""
        outcome = self.parts.writer.settle()
        if outcome is not None:
            self.parts.endings.written(outcome)
        return outcome is not None

    def _stop_stream(self, failure: BaseException | None) -> None:
        """Drop the frames left, let the write in flight land, and end every claim held:
        released after a shutdown or an outage, failed after an unexpected error."""
        if self._parts is None:
            return
        self.parts.stream.clear()
        try:
            self._settle_write()
        except Exception as error:  # the write failed too: its claims are settled below
            log.warning("the last write failed: %s", errors.first_line(error))
        self.parts.endings.settle_held(failure)


@dataclasses.dataclass(frozen=True)
class _Parts:
    """The pipeline's parts, built when the worker starts."""

    pool: psycopg_pool.ConnectionPool[Any]
    endings: Endings
    stream: Stream
    writer: Writer
    lease_keeper: lifecycle.Service
    wakeup: Wakeup


def default_threads() -> int:
    """Download+decode threads when the worker decodes in its own process."""
    return max(4, 4 * (os.cpu_count() or 1))
