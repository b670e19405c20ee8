"""The daemon loop: claim → list frames → (download, decode) → embed → fenced write → finish.

Frames flow as one stream across jobs: when fewer than two batches of frames
are buffered, the worker claims another job, so small jobs share batches and
the model never waits at a job boundary. Stages overlap: frames ahead download
and decode in a thread pool while the current batch is on the model, and the
previous batch is written on its own connection. Each job keeps its own lease,
progress and fencing; a job completes in the same transaction as its last rows.
Everything in flight is bounded, so memory stays flat.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
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

from argus_embedder import db, errors
from argus_embedder.gateways import index, store
from argus_embedder.gateways.queue import Frame, Job, Queue
from argus_embedder.pipeline import preparing
from argus_embedder.pipeline.recipe import Recipe
from argus_embedder.pipeline.storage import Storage
from argus_embedder.runtime import metrics
from argus_embedder.settings import Settings

log = logging.getLogger(__name__)

_LISTEN_SLICE = 0.5  # seconds; how quickly an idle loop notices a shutdown request
_DB_RETRY_MAX = 30.0
_UNAVAILABLE = (psycopg.OperationalError, psycopg_pool.PoolTimeout)  # the database, not the data
# What the database says of rows it will not take: a constraint (a vanished frame's
# foreign key; "no partition … found for row" is a CheckViolation) or a value it
# rejects ("bigint out of range" for a frame id near 2^63). Such an error is one job's
# data, never a reason for the daemon to stop.
_REFUSED = (psycopg.errors.IntegrityError, psycopg.errors.DataError)
_EMPTY_CLAIM_BACKOFF = 1.0  # seconds before topping up again after an empty claim
_DOWNLOAD, _DECODE, _INFER, _WRITE = (
    metrics.STAGE_DURATION.labels(stage=stage) for stage in ("download", "decode", "infer", "write")
)


class EmbedderLike(Protocol):
    """What the worker needs from argus_embedder.pipeline.embedder.Embedder."""

    model: str
    dimension: int
    batch_size: int
    preprocessing: str
    recipe: Recipe  # its bound `prepare` pickles: decode processes use it

    def prepare(self, data: bytes) -> Any: ...

    def embed(self, images: Sequence[Any]) -> npt.NDArray[np.float32]: ...


@dataclasses.dataclass(eq=False)
class _Active:
    """A claimed job whose frames are in the stream."""

    job: Job
    started: float
    pending: int  # frames listed and not yet written (or dropped)
    lost: threading.Event = dataclasses.field(default_factory=threading.Event)
    finished: bool = False  # completed, failed, lost or released: its frames are dropped

    @property
    def claim(self) -> store.Claim:
        return store.claim_of(self.job)


@dataclasses.dataclass(eq=False)
class _Item:
    """One frame in the stream, with its fetch+decode future once submitted."""

    active: _Active
    frame: Frame
    future: concurrent.futures.Future[preparing.Prepared] | None = None


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
        on_failure: Callable[[str], None] | None = None,
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
        self._on_beat = on_beat
        self._on_failure = on_failure  # a thread the loop needs died: the process is unwell
        self._keeper: threading.Thread | None = None
        self._keeper_reported = False
        self._threads = threads or default_threads()
        self._decode_processes = decode_processes
        self._active: dict[store.Claim, _Active] = {}  # by claim: an id can be claimed twice
        self._active_lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._preparer: preparing.Preparer | None = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self._segments: index.Segments | None = None
        self._frames_per_job = float(max(1, embedder.batch_size))  # a running average
        self.jobs_finished = 0

    # --- lifetime -------------------------------------------------------------

    def __enter__(self) -> Worker:
        stack = self._stack
        self._pool = stack.enter_context(
            db.pool(
                self.url,
                size=4,
                name="argus-worker",
                idle_in_transaction=self.settings.lease_seconds,
            )
        )
        self._preparer = self._start_preparer()
        stack.callback(self._preparer.close)
        self._writer = stack.enter_context(
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="argus-write")
        )
        stack.enter_context(self._heartbeat())
        stack.callback(self._close_listener)
        with self.pool.connection() as connection:
            # Registers the model (its partition) unless `migrate --model` did.
            model = index.register(connection, self.embedder.model, self.embedder.dimension)
        self._segments = index.Segments(model)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _start_preparer(self) -> preparing.Preparer:
        # Threads call the embedder's own prepare (stand-ins in tests override it);
        # processes need one that pickles: the recipe's.
        processes = self._decode_processes
        prepare = self.embedder.recipe.prepare if processes else self.embedder.prepare
        log.info("fetch and decode: %s", preparing.describe(processes, self._threads))
        return preparing.start(self.storage, prepare, processes=processes, threads=self._threads)

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
            except _UNAVAILABLE as error:
                metrics.DB_ERRORS.inc()
                log.warning("database unavailable (%s); retrying in %.0fs", _line(error), delay)
                self.shutdown.wait(delay)
                delay = min(delay * 2, _DB_RETRY_MAX)
                continue
            except Exception:
                # Exiting would make systemd restart the daemon into the same error, and
                # every daemon of the fleet with it: the jobs held were failed (their
                # attempts counted), so the next round does other work.
                log.exception("unexpected error in the loop; going on in %.0fs", delay)
                self.shutdown.wait(delay)
                delay = min(delay * 2, _DB_RETRY_MAX)
                continue
            if worked:
                continue
            if burst:
                return
            self._wait_for_work()

    def run_once(self) -> bool:
        """Claim a job and stream frames until no claimed job is left (topping up with
        more jobs while frames run low). Returns False when nothing was claimable."""
        stream: collections.deque[_Item] = collections.deque()
        if not self._claim_into(stream):
            return False
        # Busy until the stream ends, and it claims on its own meanwhile: a LISTEN
        # connection left unread that long pins the server's notification queue, and
        # once that fills every enqueue fails. It is opened again when the loop idles.
        self._close_listener()
        failure: Exception | None = None
        try:
            self._stream(stream)
        except Exception as error:
            if not isinstance(error, _UNAVAILABLE):
                failure = error
            raise
        finally:
            for item in stream:
                if item.future is not None:
                    item.future.cancel()
            self._settle_unfinished(failure)
        return True

    def beat(self) -> None:
        self._lease_keeper_alive()  # reports a dead keeper even while the loop idles
        if self._on_beat is not None:
            self._on_beat()

    # --- the stream -------------------------------------------------------------

    def _stream(self, stream: collections.deque[_Item]) -> None:
        batch_size = max(1, self.embedder.batch_size)
        pending: concurrent.futures.Future[store.Outcome] | None = None
        next_top_up = 0.0
        while stream and not self.shutdown.is_set():
            if time.monotonic() >= next_top_up and not self._top_up(stream, 2 * batch_size):
                next_top_up = time.monotonic() + _EMPTY_CLAIM_BACKOFF
            self._submit_ahead(stream, 3 * batch_size)
            batch = self._take_batch(stream, batch_size)
            if not batch:
                continue
            results = self._embed_batch(batch)
            self._settle(pending)  # at most one write in flight
            pending = self._writers().submit(self._write, results)
            self.beat()
        self._settle(pending)

    def _top_up(self, stream: collections.deque[_Item], target: int) -> bool:
        """Claim jobs until `target` frames are buffered; False once none is claimable."""
        while len(stream) < target:
            # As many jobs as the deficit needs at the recent frames-per-job, so a
            # stream of tiny jobs costs one claim per batch, not one per job.
            wanted = -(-(target - len(stream)) // max(1, round(self._frames_per_job)))
            if not self._claim_into(stream, limit=min(16, wanted)):
                return False
        return True

    def _claim_into(self, stream: collections.deque[_Item], limit: int = 1) -> bool:
        """Claim up to `limit` jobs and append their missing frames; False when none was."""
        if self.shutdown.is_set() or not self._lease_keeper_alive():
            return False
        with self.pool.connection() as connection:
            jobs = self.queue.claim(connection, limit=limit)
            self._void_earlier_claims(jobs)
            listed = self.queue.missing_frames(connection, jobs) if jobs else {}
            for job in jobs:
                metrics.JOBS_CLAIMED.inc()
                metrics.JOB_QUEUE_WAIT.observe(job.queue_wait_seconds)
                frames = listed.get(job.id)
                if frames is None:
                    self._finish_outcome(job, "lease_lost")
                    continue
                active = _Active(job, time.monotonic(), pending=len(frames))
                self._frames_per_job = 0.8 * self._frames_per_job + 0.2 * len(frames)
                log.info(
                    "job %s: claimed video %r, %d frame(s) to embed (attempt %d)",
                    job.id,
                    job.video_id,
                    len(frames),
                    job.attempts,
                )
                if not frames:  # everything was embedded already: done
                    self._complete_empty(connection, active)
                    continue
                with self._active_lock:
                    self._active[active.claim] = active
                stream.extend(_Item(active, frame) for frame in frames)
        return bool(jobs)

    def _void_earlier_claims(self, jobs: list[Job]) -> None:
        """A job cancelled and retried while its frames were still streaming came back
        under the same id: its earlier claim here is void (its token is gone), so its
        frames left in the stream are dropped and its writes are fenced out."""
        ids = {job.id for job in jobs}
        with self._active_lock:
            void = [active for claim, active in self._active.items() if claim[0] in ids]
        for active in void:
            log.info("job %s: claimed again; the earlier claim is void", active.job.id)
            active.lost.set()
            self._finish(active, "lease_lost")

    def _submit_ahead(self, stream: collections.deque[_Item], ahead: int) -> None:
        assert self._preparer is not None
        waiting = [item for item in itertools.islice(stream, ahead) if item.future is None]
        if not waiting:
            return
        futures = self._preparer.submit([item.frame.image_uri for item in waiting])
        for item, future in zip(waiting, futures, strict=True):
            item.future = future

    def _take_batch(self, stream: collections.deque[_Item], size: int) -> list[_Item]:
        batch: list[_Item] = []
        taken: dict[tuple[int, str], int] = {}  # (frame id, model) -> its place in the batch
        while stream and len(batch) < size:
            item = stream.popleft()
            if item.active.finished or item.active.lost.is_set():
                self._discard(item)
                continue
            key = (item.frame.id, item.active.job.model)
            if key in taken:
                # One frame twice in a write would void the whole COPY. Claims join the
                # stream in order, so the later item is the newer (live) claim's.
                self._discard(batch[taken[key]])
                batch[taken[key]] = item
                continue
            taken[key] = len(batch)
            batch.append(item)
        return batch

    def _discard(self, item: _Item) -> None:
        if item.future is not None:
            item.future.cancel()
        self._drop(item.active)

    def _embed_batch(self, batch: list[_Item]) -> list[store.JobWrite]:
        """Embed the batch's good frames; returns the rows per job (each job's lease kept)."""
        outputs: dict[int, Any] = {}
        for item in batch:
            assert item.future is not None
            prepared = item.future.result()
            outputs[id(item)] = prepared.output
            if isinstance(prepared.output, Exception):
                log.debug("frame %s: %s", item.frame.id, prepared.output)
            else:
                _DOWNLOAD.observe(prepared.download_seconds)
                _DECODE.observe(prepared.decode_seconds)
        self._fail_jobs_of_errors(batch, outputs)
        live = [item for item in batch if not item.active.finished]
        good = [item for item in live if not isinstance(outputs[id(item)], Exception)]
        vectors = self._embed_isolating_failures(good, outputs)
        by_claim: dict[_Active, list[store.FrameResult]] = {}
        for item in live:
            if item.active.finished:  # its sub-batch crashed the model: the job was failed
                continue
            output = outputs[id(item)]
            result = (
                store.FrameResult(item.frame.id, error=str(output)[:1000])
                if isinstance(output, errors.FrameError)
                else store.embedded(item.frame.id, vectors[id(item)])
            )
            by_claim.setdefault(item.active, []).append(result)
        writes = []
        for active, results in by_claim.items():
            active.pending -= len(results)
            writes.append(store.JobWrite(active.job, results, complete=active.pending == 0))
        return writes

    def _fail_jobs_of_errors(self, batch: list[_Item], outputs: dict[int, Any]) -> None:
        """A frame that hit a transient fault (after retries) or an unexpected error fails
        its whole job with backoff, never the frame: the job comes back and resumes, and
        a job that keeps failing ends `failed` after max_attempts."""
        for item in batch:
            output = outputs[id(item)]
            if item.active.finished or not isinstance(output, Exception):
                continue
            if isinstance(output, errors.TransientError):
                self._fail_job(item.active, f"transient: {output}", transient=True)
            elif not isinstance(output, errors.FrameError):
                self._fail_job(item.active, f"{type(output).__name__}: {output}")

    def _embed_isolating_failures(
        self, good: list[_Item], outputs: dict[int, Any]
    ) -> dict[int, npt.NDArray[np.float32]]:
        """Vectors by item; if the batch crashes the model, retry it job by job so one
        poison job fails alone instead of taking its batch-mates down."""
        if not good:
            return {}
        try:
            return self._embed(good, outputs)
        except Exception:
            if len({item.active.claim for item in good}) == 1:
                self._fail_job(good[0].active, _describe_current())
                return {}
        vectors: dict[int, npt.NDArray[np.float32]] = {}
        for job_items in _group_by_job(good):
            try:
                vectors.update(self._embed(job_items, outputs))
            except Exception:
                self._fail_job(job_items[0].active, _describe_current())
        return vectors

    def _embed(
        self, items: list[_Item], outputs: dict[int, Any]
    ) -> dict[int, npt.NDArray[np.float32]]:
        started = time.perf_counter()
        vectors = self.embedder.embed([outputs[id(item)] for item in items])
        _INFER.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(items))
        return {id(item): vectors[row] for row, item in enumerate(items)}

    def _write(self, writes: list[store.JobWrite]) -> store.Outcome:
        started = time.perf_counter()
        with self.pool.connection() as connection:
            outcome = self._write_isolating_refusals(connection, writes)
        _WRITE.observe(time.perf_counter() - started)
        for job_write in writes:
            claim = store.claim_of(job_write.job)
            if claim in outcome.lost or claim in outcome.refused:
                continue
            failed = job_write.failed
            metrics.FRAMES_PROCESSED.labels(outcome="failed").inc(failed)
            metrics.FRAMES_PROCESSED.labels(outcome="embedded").inc(len(job_write.results) - failed)
        return outcome

    def _write_isolating_refusals(
        self, connection: psycopg.Connection[Any], writes: list[store.JobWrite]
    ) -> store.Outcome:
        """Write the batch; if the database refuses a row (a constraint, a bad value),
        write it job by job, so the innocent jobs' rows land and only the job whose
        rows were refused is reported, to be failed with its attempt counted."""
        try:
            return self._write_rows(connection, writes)
        except _REFUSED as error:
            if len(writes) == 1:
                return self._refused(connection, writes[0], error)
        outcome = store.Outcome()
        for job_write in writes:
            try:
                outcome.add(self._write_rows(connection, [job_write]))
            except _REFUSED as error:
                outcome.add(self._refused(connection, job_write, error))
        return outcome

    def _write_rows(
        self, connection: psycopg.Connection[Any], writes: list[store.JobWrite]
    ) -> store.Outcome:
        self._segment_cache().ensure(
            connection, (result.frame_id for write in writes for result in write.results)
        )
        return store.write(
            connection,
            writes,
            preprocessing=self.embedder.preprocessing,
            lease_seconds=self.settings.lease_seconds,
        )

    def _refused(
        self, connection: psycopg.Connection[Any], job_write: store.JobWrite, error: Exception
    ) -> store.Outcome:
        """The outcome of a job whose rows the database refused, naming the frame when
        one alone is refused (each tried in a transaction that is rolled back)."""
        reason = _describe(error)
        for result in job_write.results:
            try:
                # Segments are created for real: a rolled-back one would stay in the cache.
                self._segment_cache().ensure(connection, [result.frame_id])
                with connection.transaction(force_rollback=True):
                    store.write(
                        connection,
                        [store.JobWrite(job_write.job, [result])],
                        preprocessing=self.embedder.preprocessing,
                        lease_seconds=self.settings.lease_seconds,
                    )
            except _REFUSED as frame_error:
                reason = f"frame {result.frame_id} cannot be written: {_describe(frame_error)}"
                break
        return store.Outcome(refused={store.claim_of(job_write.job): f"write refused: {reason}"})

    def _settle(self, pending: concurrent.futures.Future[store.Outcome] | None) -> None:
        """Wait for a write and account for it: lost leases, completed jobs."""
        if pending is None:
            return
        outcome = pending.result()
        for claim, error in outcome.refused.items():
            active = self._active.get(claim)
            if active is not None:
                self._fail_job(active, error)
        for claim in outcome.lost:
            active = self._active.get(claim)
            if active is not None and not active.finished:
                active.lost.set()
                self._finish(active, "lease_lost")
        for claim in outcome.completed:
            active = self._active.get(claim)
            if active is not None:
                metrics.JOB_DURATION.observe(time.monotonic() - active.started)
                metrics.LAST_SUCCESS.set_to_current_time()
                self._finish(active, "succeeded")

    def _drop(self, active: _Active) -> None:
        """A frame of a finished job left the stream; account it so nothing waits on it."""
        active.pending -= 1
        if active.lost.is_set() and not active.finished:
            self._finish(active, "lease_lost")

    # --- job endings ------------------------------------------------------------

    def _complete_empty(self, connection: psycopg.Connection[Any], active: _Active) -> None:
        duration = self.queue.complete(connection, active.job)
        self._finish_outcome(active.job, "succeeded" if duration is not None else "lease_lost")

    def _fail_job(self, active: _Active, error: str, *, transient: bool = False) -> None:
        if active.finished:
            return
        log.warning("job %s: %s", active.job.id, error)
        with self.pool.connection() as connection:
            status = self.queue.fail(connection, active.job, error, transient=transient)
        outcome = (
            "lease_lost" if status is None else ("failed" if status == "failed" else "retried")
        )
        self._finish(active, outcome)

    def _settle_unfinished(self, failure: Exception | None) -> None:
        """After the stream: jobs still held are released without an attempt when it
        ended for a shutdown or a database outage; after an unexpected error, which may
        be a held job's doing, they are failed with their attempt counted, so a job that
        always causes one ends `failed` instead of being retried forever."""
        with self._active_lock:
            leftovers = [active for active in self._active.values() if not active.finished]
        for active in leftovers:
            try:
                if failure is not None:
                    self._fail_job(active, f"stopped by an unexpected error: {_describe(failure)}")
                    continue
                with self.pool.connection() as connection:
                    released = self.queue.release(connection, active.job)
            except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
                # The database is gone: the lease expires and the job is reclaimed.
                log.warning("job %s: could not settle (%s)", active.job.id, _line(error))
                released = False
            self._finish(active, "released" if released else "lease_lost")

    def _finish(self, active: _Active, outcome: str) -> None:
        active.finished = True
        with self._active_lock:
            self._active.pop(active.claim, None)
        self._finish_outcome(active.job, outcome)

    def _finish_outcome(self, job: Job, outcome: str) -> None:
        metrics.JOBS_COMPLETED.labels(outcome=outcome).inc()
        self.jobs_finished += 1
        log.info("job %s: %s", job.id, outcome)

    def _segment_cache(self) -> index.Segments:
        assert self._segments is not None
        return self._segments

    def _writers(self) -> concurrent.futures.ThreadPoolExecutor:
        assert self._writer is not None
        return self._writer

    # --- heartbeat and wake-ups -----------------------------------------------

    @contextlib.contextmanager
    def _heartbeat(self) -> Iterator[None]:
        stop = threading.Event()
        thread = threading.Thread(
            target=self._renew_leases, args=(stop,), name="argus-heartbeat", daemon=True
        )
        thread.start()
        self._keeper = thread
        try:
            yield
        finally:
            self._keeper = None  # stopped on purpose from here on
            stop.set()
            thread.join(timeout=5)

    def _renew_leases(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.heartbeat_interval):
            try:
                self._renew_round()
            except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
                log.warning("lease renewal failed: %s", _line(error))
            except Exception:
                # Ending the keeper would let every held lease lapse: log, try next round.
                log.exception("lease renewal failed")

    def _renew_round(self) -> None:
        with self._active_lock:
            actives = [active for active in self._active.values() if not active.finished]
        if not actives:
            return
        with self.pool.connection(timeout=self.settings.heartbeat_interval) as connection:
            held = self.queue.renew(connection, [active.job for active in actives])
        for active in actives:
            if active.job.id not in held:
                log.warning("job %s: lease lost (cancelled or reclaimed)", active.job.id)
                active.lost.set()

    def _lease_keeper_alive(self) -> bool:
        """False once the keeper thread has ended while the worker runs: then no job is
        claimed (its lease would lapse mid-stream) and `on_failure` is told, once."""
        keeper = self._keeper
        if keeper is None or keeper.is_alive():
            return True
        if not self._keeper_reported:
            self._keeper_reported = True
            reason = "the lease keeper thread stopped: no more jobs are claimed"
            log.error(reason)
            if self._on_failure is not None:
                self._on_failure(reason)
        return False

    def _wait_for_work(self) -> None:
        """Sleep until a NOTIFY, the poll interval, or shutdown, whichever comes first."""
        deadline = time.monotonic() + self.settings.poll_interval
        while not self.shutdown.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.beat()
            fresh = self._listener is None
            listener = self._listen()
            if fresh and listener is not None:
                return  # claim once more: a job enqueued just before LISTEN woke nobody
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


def default_threads() -> int:
    """Download+decode threads when the worker decodes in its own process."""
    return max(4, 4 * (os.cpu_count() or 1))


def _group_by_job(items: list[_Item]) -> list[list[_Item]]:
    groups: dict[store.Claim, list[_Item]] = {}
    for item in items:
        groups.setdefault(item.active.claim, []).append(item)
    return list(groups.values())


def _describe_current() -> str:
    import sys

    error = sys.exc_info()[1]
    log.exception("embedding failed")
    return f"{type(error).__name__}: {error}"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {_line(error)}"


def _line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
