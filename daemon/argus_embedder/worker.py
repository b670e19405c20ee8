"""The daemon loop: claim → list frames → (download, decode) → embed → fenced write → finish.

Stages overlap: frames of the next batches download and decode in a thread
pool while the current batch is on the model, and the previous batch is
written on its own connection. Queues are bounded, so memory stays flat.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import psycopg
import psycopg_pool

from argus_embedder import db, errors, metrics, store
from argus_embedder.queue import Frame, Job, Queue
from argus_embedder.settings import Settings
from argus_embedder.storage import Storage

log = logging.getLogger(__name__)

_LISTEN_SLICE = 0.5  # seconds; how quickly an idle loop notices a shutdown request
_DB_RETRY_MAX = 30.0


class EmbedderLike(Protocol):
    """What the worker needs from argus_embedder.embedder.Embedder."""

    model: str
    batch_size: int
    preprocessing: str

    def prepare(self, data: bytes) -> Any: ...

    def embed(self, images: Sequence[Any]) -> npt.NDArray[np.float32]: ...


@dataclasses.dataclass
class _Lease:
    """A job being processed, and whether the heartbeat found its lease gone."""

    job: Job
    lost: threading.Event = dataclasses.field(default_factory=threading.Event)


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
    ) -> None:
        self.settings = settings
        self.url = url
        self.embedder = embedder
        self.storage = storage or Storage(settings)
        self.shutdown = shutdown or threading.Event()
        self.queue = Queue(
            model=embedder.model, worker_id=settings.worker_id, lease_seconds=settings.lease_seconds
        )
        self._on_beat = on_beat
        self._threads = threads or max(4, 4 * (os.cpu_count() or 1))
        self._leases: dict[int, _Lease] = {}
        self._leases_lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._fetchers: concurrent.futures.ThreadPoolExecutor | None = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self.jobs_finished = 0

    # --- lifetime -------------------------------------------------------------

    def __enter__(self) -> Worker:
        stack = self._stack
        self._pool = stack.enter_context(db.pool(self.url, size=4, name="argus-worker"))
        self._fetchers = stack.enter_context(
            concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="argus-fetch")
        )
        self._writer = stack.enter_context(
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="argus-write")
        )
        stack.enter_context(self._heartbeat())
        stack.callback(self._close_listener)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    @property
    def pool(self) -> psycopg_pool.ConnectionPool[Any]:
        assert self._pool is not None, "use Worker as a context manager"
        return self._pool

    # --- the loop -------------------------------------------------------------

    def run(self, *, burst: bool = False) -> None:
        """Loop until shutdown (or, with `burst`, until nothing is claimable)."""
        delay = 1.0
        while not self.shutdown.is_set():
            self.beat()
            try:
                worked = self.run_once()
                delay = 1.0
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
                metrics.DB_ERRORS.inc()
                log.warning("database unavailable (%s); retrying in %.0fs", _line(error), delay)
                self.shutdown.wait(delay)
                delay = min(delay * 2, _DB_RETRY_MAX)
                continue
            if worked:
                continue
            if burst:
                return
            self._wait_for_work()

    def run_once(self) -> bool:
        """Claim one job and process it to the end. Returns False when none was claimable."""
        with self.pool.connection() as connection:
            jobs = self.queue.claim(connection, limit=1)
        if not jobs:
            return False
        for job in jobs:
            metrics.JOBS_CLAIMED.inc()
            metrics.JOB_QUEUE_WAIT.observe(job.queue_wait_seconds)
            self._process(job)
        return True

    def beat(self) -> None:
        if self._on_beat is not None:
            self._on_beat()

    # --- one job --------------------------------------------------------------

    def _process(self, job: Job) -> None:
        lease = _Lease(job)
        with self._leases_lock:
            self._leases[job.id] = lease
        log.info("job %s: claimed video %r (attempt %d)", job.id, job.video_id, job.attempts)
        try:
            outcome = self._embed_job(lease)
        except errors.LeaseLostError:
            outcome = "lease_lost"
        except errors.TransientError as error:
            outcome = self._fail(job, f"transient: {error}")
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout):
            # The database went away mid-job: the lease expires and the job is
            # reclaimed (that attempt counts), so nothing is lost.
            raise
        except Exception as error:  # a job-level fault (model crash, bug): retry with backoff
            log.exception("job %s: failed", job.id)
            outcome = self._fail(job, f"{type(error).__name__}: {error}")
        finally:
            with self._leases_lock:
                self._leases.pop(job.id, None)
        metrics.JOBS_COMPLETED.labels(outcome=outcome).inc()
        self.jobs_finished += 1
        log.info("job %s: %s", job.id, outcome)

    def _fail(self, job: Job, error: str) -> str:
        with self.pool.connection() as connection:
            status = self.queue.fail(connection, job, error)
        if status is None:
            return "lease_lost"
        return "failed" if status == "failed" else "retried"

    def _embed_job(self, lease: _Lease) -> str:
        job = lease.job
        started = time.monotonic()
        with self.pool.connection() as connection:
            frames = self.queue.missing_frames(connection, job)
        if frames is None:
            raise errors.LeaseLostError(f"job {job.id}: lease lost before start")
        batch_size = max(1, self.embedder.batch_size)
        batches = [frames[i : i + batch_size] for i in range(0, len(frames), batch_size)]
        pending_write: concurrent.futures.Future[set[int]] | None = None
        released = False
        for batch, prepared in self._prefetch(batches):
            if self.shutdown.is_set():
                released = True
                break
            self._check(lease, pending_write)
            results = self._embed_batch(batch, prepared)
            self._check(lease, pending_write, final=True)  # one write in flight at most
            pending_write = self._writers().submit(self._write, job, results)
            self.beat()
        self._check(lease, pending_write, final=True)
        if released:
            with self.pool.connection() as connection:
                self.queue.release(connection, job)
            return "released"
        with self.pool.connection() as connection:
            duration = self.queue.complete(connection, job)
        if duration is None:
            raise errors.LeaseLostError(f"job {job.id}: lease lost at completion")
        metrics.JOB_DURATION.observe(time.monotonic() - started)
        metrics.LAST_SUCCESS.set_to_current_time()
        return "succeeded"

    def _check(
        self,
        lease: _Lease,
        pending_write: concurrent.futures.Future[set[int]] | None,
        *,
        final: bool = False,
    ) -> None:
        """Raise LeaseLostError if the heartbeat or the last write found the lease gone.

        With `final`, waits for the pending write (so at most one is in flight).
        """
        written = pending_write is not None and (final or pending_write.done())
        if written and pending_write is not None and lease.job.id in pending_write.result():
            lease.lost.set()
        if lease.lost.is_set():
            raise errors.LeaseLostError(f"job {lease.job.id}: lease lost (cancelled or reclaimed)")

    def _prefetch(
        self, batches: list[list[Frame]]
    ) -> Iterator[tuple[list[Frame], list[concurrent.futures.Future[Any]]]]:
        """Yield each batch with its fetch+decode futures, keeping two batches in flight."""
        assert self._fetchers is not None
        fetchers = self._fetchers
        submitted: list[list[concurrent.futures.Future[Any]]] = []
        ahead = 2
        try:
            for index, batch in enumerate(batches):
                while len(submitted) <= min(index + ahead, len(batches) - 1):
                    upcoming = batches[len(submitted)]
                    submitted.append(
                        [fetchers.submit(self._fetch_and_prepare, frame) for frame in upcoming]
                    )
                yield batch, submitted[index]
        finally:
            for futures in submitted:
                for future in futures:
                    future.cancel()

    def _fetch_and_prepare(self, frame: Frame) -> Any:
        """Bytes → model input for one frame; a FrameError is returned, not raised."""
        try:
            started = time.perf_counter()
            data = self.storage.fetch(frame.image_uri)
            fetched = time.perf_counter()
            prepared = self.embedder.prepare(data)
            metrics.STAGE_DURATION.labels(stage="download").observe(fetched - started)
            metrics.STAGE_DURATION.labels(stage="decode").observe(time.perf_counter() - fetched)
        except errors.FrameError as error:
            return error
        return prepared

    def _embed_batch(
        self, batch: list[Frame], prepared: list[concurrent.futures.Future[Any]]
    ) -> list[store.FrameResult]:
        outputs = [future.result() for future in prepared]  # re-raises TransientError
        good = [i for i, output in enumerate(outputs) if not isinstance(output, errors.FrameError)]
        vectors: npt.NDArray[np.float32] | None = None
        if good:
            started = time.perf_counter()
            vectors = self.embedder.embed([outputs[i] for i in good])
            metrics.STAGE_DURATION.labels(stage="infer").observe(time.perf_counter() - started)
            metrics.BATCH_SIZE.observe(len(good))
        results = []
        row = 0
        for frame, output in zip(batch, outputs, strict=True):
            if isinstance(output, errors.FrameError):
                results.append(store.FrameResult(frame.id, error=str(output)[:1000]))
            else:
                assert vectors is not None
                results.append(store.FrameResult(frame.id, vector=vectors[row]))
                row += 1
        return results

    def _writers(self) -> concurrent.futures.ThreadPoolExecutor:
        assert self._writer is not None
        return self._writer

    def _write(self, job: Job, results: list[store.FrameResult]) -> set[int]:
        started = time.perf_counter()
        with self.pool.connection() as connection:
            lost = store.write(
                connection,
                [store.JobWrite(job, results)],
                preprocessing=self.embedder.preprocessing,
                lease_seconds=self.settings.lease_seconds,
            )
        metrics.STAGE_DURATION.labels(stage="write").observe(time.perf_counter() - started)
        if job.id not in lost:
            failed = sum(1 for result in results if result.error is not None)
            metrics.FRAMES_PROCESSED.labels(outcome="failed").inc(failed)
            metrics.FRAMES_PROCESSED.labels(outcome="embedded").inc(len(results) - failed)
        return lost

    # --- heartbeat and wake-ups -----------------------------------------------

    @contextlib.contextmanager
    def _heartbeat(self) -> Iterator[None]:
        stop = threading.Event()
        thread = threading.Thread(
            target=self._renew_leases, args=(stop,), name="argus-heartbeat", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def _renew_leases(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.heartbeat_interval):
            with self._leases_lock:
                leases = list(self._leases.values())
            if not leases:
                continue
            try:
                with self.pool.connection(timeout=self.settings.heartbeat_interval) as connection:
                    held = self.queue.renew(connection, [lease.job for lease in leases])
            except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
                log.warning("lease renewal failed: %s", _line(error))
                continue
            for lease in leases:
                if lease.job.id not in held:
                    log.warning("job %s: lease lost (cancelled or reclaimed)", lease.job.id)
                    lease.lost.set()

    def _wait_for_work(self) -> None:
        """Sleep until a NOTIFY, the poll interval, or shutdown, whichever comes first."""
        deadline = time.monotonic() + self.settings.poll_interval
        while not self.shutdown.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.beat()
            listener = self._listen()
            if listener is None:
                self.shutdown.wait(min(left, _LISTEN_SLICE))
                continue
            try:
                for _ in listener.notifies(timeout=min(left, _LISTEN_SLICE), stop_after=1):
                    return
            except psycopg.OperationalError:
                self._close_listener()

    def _listen(self) -> psycopg.Connection[Any] | None:
        if self._listener is None or self._listener.closed:
            try:
                self._listener = db.connect(self.url, autocommit=True, vector=False)
                self._listener.execute(db.queries()["listen"])
            except (errors.ArgusError, psycopg.Error) as error:
                log.debug("LISTEN unavailable, polling only: %s", error)
                self._close_listener()
        return self._listener

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(psycopg.Error):
                self._listener.close()
        self._listener = None


def _line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
