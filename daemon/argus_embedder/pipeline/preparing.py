"""Fetch and decode frames beside the model: in worker processes, or in threads.

One daemon process has one GIL, and fetching plus decoding a frame holds it for about a
millisecond of Python (HTTP, Pillow's glue, bookkeeping) even where the C parts release it:
on a GPU host that caps a threaded worker far below the model. `ProcessPreparer` moves
fetch and decode into a pool of processes (each with a few threads, so S3 latency
overlaps), which never import torch. Measured on the bench's 720p frames: the daemon
process fell from 5.9 to ~1 ms of CPU per frame (model and writes included), handing a
frame across costs it ~0.1 ms (docs/performance.md).
`ThreadPreparer` does the same work in this process (tests with stand-in embedders, one-core
hosts).

A frame that kills its process (a decoder segfault, the kernel's OOM killer) breaks the
pool: every frame in flight is then re-run one at a time in a fresh process, and the one
that kills that too becomes the frame's error. The daemon, and the job, carry on.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from argus_embedder import errors, metrics
from argus_embedder.pipeline import images
from argus_embedder.pipeline.storage import Storage

log = logging.getLogger(__name__)

# forkserver: children fork from a clean server that imported this module only (no
# torch, no daemon threads or locks). A test harness may set "fork" to hand a patched
# decoder down to the children.
START_METHOD = "forkserver"
CHUNK_FRAMES = 8  # frames per task: one pickle round trip carries eight frames
THREADS_PER_PROCESS = 4  # concurrent GETs per process, so S3 latency does not idle a core

Prepare = Callable[[bytes], Any]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One frame's outcome: the model input, or the error (returned, never raised)."""

    output: Any
    download_seconds: float = 0.0
    decode_seconds: float = 0.0
    s3_retries: int = 0  # counted where they happened; a decode process's are replayed


class Preparer(Protocol):
    """Where the worker sends frames to be fetched and decoded."""

    def submit(self, uris: Sequence[str]) -> list[concurrent.futures.Future[Prepared]]: ...

    def close(self) -> None: ...


MAX_AUTO_PROCESSES = 16  # ~60 MB each; ~2,000 frames/s of 720p JPEGs at 224 px


def processes(setting: int | None) -> int:
    """ARGUS_DECODE_PROCESSES if set, else one per usable core (at most 16); 0 (threads
    in the daemon) on one core, where a process would only add a copy."""
    if setting is not None:
        return setting
    cores = len(os.sched_getaffinity(0))
    return min(cores, MAX_AUTO_PROCESSES) if cores > 1 else 0


def start(storage: Storage, prepare: Prepare, *, processes: int, threads: int) -> Preparer:
    """A ProcessPreparer with `processes` processes, or with 0 a ThreadPreparer."""
    if processes > 0:
        return ProcessPreparer(storage, prepare, processes)
    return ThreadPreparer(storage, prepare, threads)


def for_embedder(storage: Storage, embedder: Any, *, processes: int, threads: int) -> Preparer:
    """The preparer a worker uses for `embedder`. Threads call the embedder's own
    prepare (stand-ins in tests override it); processes need one that pickles: its
    recipe's."""
    prepare = embedder.recipe.prepare if processes else embedder.prepare
    log.info("fetch and decode: %s", describe(processes, threads))
    return start(storage, prepare, processes=processes, threads=threads)


def describe(processes: int, threads: int) -> str:
    """How `start(..., processes=processes, threads=threads)` decodes, in words."""
    if processes > 0:
        return f"{processes} processes x {THREADS_PER_PROCESS} threads"
    return f"{threads} threads in the daemon process"


def fetch_and_prepare(storage: Storage, prepare: Prepare, uri: str) -> Prepared:
    """Bytes → model input for one frame. A FrameError becomes the frame's error row; a
    TransientError or anything else fails its job (the worker decides)."""
    try:
        started = time.perf_counter()
        data = storage.fetch(uri)
        fetched = time.perf_counter()
        output = prepare(data)
    except Exception as error:  # handed to the batch, which decides per kind
        return Prepared(error, s3_retries=storage.last_retries())
    return Prepared(
        output, fetched - started, time.perf_counter() - fetched, storage.last_retries()
    )


class ThreadPreparer:
    """Fetch and decode in a thread pool of this process."""

    def __init__(self, storage: Storage, prepare: Prepare, threads: int) -> None:
        self._storage = storage
        self._prepare = prepare
        self._pool = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="argus-fetch"
        )

    def submit(self, uris: Sequence[str]) -> list[concurrent.futures.Future[Prepared]]:
        return [
            self._pool.submit(fetch_and_prepare, self._storage, self._prepare, uri) for uri in uris
        ]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ProcessPreparer:
    """Fetch and decode in `processes` worker processes, CHUNK_FRAMES frames per task.

    `storage` and `prepare` must pickle (Storage rebuilds its clients in the child; a
    Recipe's bound `prepare` pickles with its recipe).
    """

    def __init__(self, storage: Storage, prepare: Prepare, processes: int) -> None:
        self._context = multiprocessing.get_context(START_METHOD)
        if START_METHOD == "forkserver":
            self._context.set_forkserver_preload([__name__])
        budget = max(images.DECODE_BUDGET_BYTES // processes, 64 << 20)
        self._initargs = (storage, prepare, THREADS_PER_PROCESS, budget)
        self._processes = processes
        self._lock = threading.Lock()
        self._pool = self._new_pool(processes)
        self._warm_up(processes)
        self._isolator: concurrent.futures.ProcessPoolExecutor | None = None
        # Crash recovery runs here, off the pool's result thread.
        self._recovery = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="argus-isolate"
        )
        self.poisoned = 0  # frames that killed their decode process on their own

    def submit(self, uris: Sequence[str]) -> list[concurrent.futures.Future[Prepared]]:
        futures: list[concurrent.futures.Future[Prepared]] = []
        for start in range(0, len(uris), CHUNK_FRAMES):
            chunk = list(uris[start : start + CHUNK_FRAMES])
            waiting = [_running_future() for _ in chunk]
            pool, task = self._submit_chunk(chunk)
            task.add_done_callback(functools.partial(self._deliver, pool, chunk, waiting))
            futures.extend(waiting)
        return futures

    def close(self) -> None:
        self._recovery.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._pool.shutdown(wait=True, cancel_futures=True)
            if self._isolator is not None:
                self._isolator.shutdown(wait=True, cancel_futures=True)

    def _new_pool(self, processes: int) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=self._context, initializer=_start_child, initargs=self._initargs
        )

    def _warm_up(self, processes: int) -> None:
        """Start every process now (a second or so each), not under the first frames."""
        tasks = [self._pool.submit(_ready) for _ in range(processes)]
        concurrent.futures.wait(tasks)

    def _submit_chunk(
        self, chunk: list[str]
    ) -> tuple[concurrent.futures.ProcessPoolExecutor, concurrent.futures.Future[list[Prepared]]]:
        with self._lock:
            try:
                return self._pool, self._pool.submit(_prepare_chunk, chunk)
            except BrokenProcessPool:
                _kill_processes(self._pool)
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool(self._processes)
                return self._pool, self._pool.submit(_prepare_chunk, chunk)

    def _deliver(
        self,
        pool: concurrent.futures.ProcessPoolExecutor,
        chunk: list[str],
        waiting: list[concurrent.futures.Future[Prepared]],
        task: concurrent.futures.Future[list[Prepared]],
    ) -> None:
        error = task.exception()
        if isinstance(error, BrokenProcessPool):
            # Runs on the broken pool's manager thread, before it stops the survivors.
            _kill_processes(pool)
            self._recovery.submit(self._isolate, chunk, waiting)
            return
        results = task.result() if error is None else [Prepared(error)] * len(chunk)
        for future, result in zip(waiting, results, strict=True):
            _settle(future, result)

    def _isolate(
        self, chunk: list[str], waiting: list[concurrent.futures.Future[Prepared]]
    ) -> None:
        """A process died while this chunk was in flight: run its frames one at a time in a
        process of their own; a frame that kills that one too is the culprit."""
        log.warning("a decode process died; re-running %d frame(s) one at a time", len(chunk))
        for uri, future in zip(chunk, waiting, strict=True):
            try:
                _settle(future, self._alone(uri))
            except Exception as error:  # never leave the worker waiting on a future
                _settle(future, Prepared(error))

    def _alone(self, uri: str) -> Prepared:
        if self._isolator is None:
            self._isolator = self._new_pool(1)
        try:
            return self._isolator.submit(_prepare_chunk, [uri]).result()[0]
        except BrokenProcessPool:
            _kill_processes(self._isolator)
            self._isolator.shutdown(wait=False, cancel_futures=True)
            self._isolator = None
            self.poisoned += 1
            log.error("frame %s killed its decode process on its own: recorded as failed", uri)
            return Prepared(
                errors.FrameError(
                    "decoding this frame killed the decode process (a crash in the image "
                    "decoder, or out of memory)"
                )
            )


def _kill_processes(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """SIGKILL a broken pool's surviving processes.

    The executor stops them itself (SIGTERM, then it joins them, and the interpreter
    joins its manager thread at exit); killing them first means a survivor blocked
    writing its result into the dead pool's pipe never delays anything. The executor
    keeps its processes in a private mapping; without it the executor's own stop remains.
    """
    processes: dict[int, multiprocessing.process.BaseProcess] = (
        getattr(pool, "_processes", None) or {}
    )
    for process in list(processes.values()):
        with contextlib.suppress(Exception):
            process.kill()


def _settle(future: concurrent.futures.Future[Prepared], result: Prepared) -> None:
    """Hand a decode process's result to the worker, replaying its S3 retries into this
    process's metrics (the child's own counters are never scraped)."""
    if result.s3_retries:
        metrics.S3_RETRIES.inc(result.s3_retries)
    future.set_result(result)


def _running_future() -> concurrent.futures.Future[Prepared]:
    """A future the worker cannot cancel: its result always arrives."""
    future: concurrent.futures.Future[Prepared] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()
    return future


# --- in the child process -------------------------------------------------------------

_child: tuple[Storage, Prepare, concurrent.futures.ThreadPoolExecutor] | None = None


def _start_child(storage: Storage, prepare: Prepare, threads: int, budget: int) -> None:
    global _child
    # Stopping is the daemon's call: a Ctrl-C to the process group must not kill decode
    # processes mid-frame (their frames would look like crashes). They leave with it.
    # SIGTERM keeps its default: only the executor sends it (systemd's KillMode=mixed
    # and Docker signal the daemon alone), to stop the survivors of a broken pool; a
    # survivor ignoring it, blocked writing a result, hung the daemon at exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with, args=(parent,), name="argus-parent", daemon=True
        ).start()
    images.limit_decode_memory(budget)
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="argus-fetch")
    _child = (storage, prepare, pool)


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    """Leave when the daemon is gone, even if it was SIGKILLed (no orphans)."""
    parent.join()
    os._exit(0)


def _ready() -> bool:
    return _child is not None


def _prepare_chunk(uris: list[str]) -> list[Prepared]:
    assert _child is not None, "runs in a decode process"
    storage, prepare, pool = _child
    results = list(pool.map(functools.partial(fetch_and_prepare, storage, prepare), uris))
    return [_picklable(result) for result in results]


def _picklable(result: Prepared) -> Prepared:
    """Errors the worker tells apart travel as they are; any other becomes an ArgusError
    naming its type, so an exception that does not pickle cannot break the pool."""
    error = result.output
    if not isinstance(error, Exception) or isinstance(
        error, (errors.FrameError, errors.TransientError)
    ):
        return result
    with contextlib.suppress(Exception):
        named = errors.ArgusError(f"{type(error).__name__}: {error}")
        return dataclasses.replace(result, output=named)
    return dataclasses.replace(result, output=errors.ArgusError(type(error).__name__))
