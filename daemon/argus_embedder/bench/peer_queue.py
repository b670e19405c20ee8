"""Empty-job claim+complete throughput: argus' queue against pgqueuer, same database, same run.

Both sides get `workers` threads, each with its own connection, draining `jobs` jobs that
carry no work, so what is measured is the queue: claim, fence, finish. Both take BATCH jobs
per claim (pgqueuer's default) and finish them together (argus: Queue.complete_many;
pgqueuer: its buffered completion log). pgqueuer is optional
(`pip install 'argus-embedder[bench]'`); without it the comparison reports why, never a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import importlib.metadata
import itertools
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg

from argus_embedder import db
from argus_embedder.gateways import queue
from argus_embedder.gateways.queue import Queue

MODEL = "argus-bench/claims"  # a model no other scenario uses, so only these jobs match
ENTRYPOINT = "argus_bench_noop"
BATCH = 10  # jobs per claim on both sides: pgqueuer's default dequeue batch


@dataclasses.dataclass(frozen=True)
class Drain:
    """One side's result: jobs finished, and the seconds from the first to the last.

    Steady state only, the same for both sides: neither the workers' start-up (pgqueuer
    checks its schema and starts listeners first) nor their exit (its drain mode idles for
    a dequeue timeout before it notices the queue is empty) is counted.
    """

    jobs: int
    seconds: float

    @property
    def per_second(self) -> float:
        return (self.jobs - 1) / self.seconds


def best(drains: list[Drain]) -> float:
    """Jobs per second of the fastest of several drains (noise only slows one down)."""
    return max(drain.per_second for drain in drains)


@dataclasses.dataclass(frozen=True)
class Peer:
    """The peer's result, or why there is none."""

    library: str
    version: str | None
    drain: Drain | None
    reason: str | None = None


def argus(url: str, jobs: int, workers: int) -> Drain:
    """Enqueue `jobs` empty jobs, then drain them with `workers` loops of Queue.claim of
    BATCH jobs and Queue.complete_many of what was claimed."""
    with db.connect(url, autocommit=True) as connection:
        queue.enqueue_many(connection, [f"claims-{i}" for i in range(jobs)], model=MODEL)

    def drain(slot: int, ready: Callable[[], None], finished: Callable[[], None]) -> None:
        work = Queue(model=MODEL, worker_id=f"argus-bench-{slot}", lease_seconds=60)
        with db.connect(url, autocommit=True) as connection:
            ready()
            while claimed := work.claim(connection, limit=BATCH):
                for _ in work.complete_many(connection, claimed):
                    finished()

    return _race(workers, drain)


Drainer = Callable[[int, Callable[[], None], Callable[[], None]], None]


def _race(workers: int, drain: Drainer) -> Drain:
    """Run `drain(slot, ready, finished)` on `workers` threads, released together.

    Each `drain` connects, calls `ready()` (which waits for the others), then drains,
    calling `finished()` per job.
    """
    start = threading.Barrier(workers + 1)
    stamps: list[list[float]] = [[] for _ in range(workers)]
    failures: list[BaseException] = []

    def ready() -> None:
        start.wait()

    def body(slot: int) -> None:
        try:
            drain(slot, ready, lambda: stamps[slot].append(time.perf_counter()))
        except BaseException as error:
            failures.append(error)
            start.abort()

    threads = [
        threading.Thread(target=body, args=(slot,), name=f"bench-claims-{slot}")
        for slot in range(workers)
    ]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a worker failed: raised below
        start.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    finished = [stamp for slot in stamps for stamp in slot]
    if len(finished) < 2:
        return Drain(jobs=len(finished), seconds=float("nan"))
    return Drain(jobs=len(finished), seconds=max(finished) - min(finished))


def pgqueuer(url: str, jobs: int, workers: int) -> Peer:
    """The same drain with pgqueuer's QueueManager (psycopg driver, its default batching)."""
    try:
        # Imported by name: an optional extra that the type checker may not see.
        library: Any = importlib.import_module("pgqueuer")
        version: str | None = importlib.metadata.version("pgqueuer")
    except ImportError as error:
        reason = (
            f"pgqueuer is not installed ({error}); install the bench extra: "
            "pip install 'argus-embedder[bench]'"
        )
        return Peer("pgqueuer", None, None, reason)
    try:
        asyncio.run(_pgqueuer_enqueue(library, url, jobs))
        drain = _pgqueuer_drain(library, url, jobs, workers)
    except Exception as error:
        line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return Peer("pgqueuer", version, None, f"pgqueuer failed to run here: {line}")
    if drain.jobs != jobs:
        return Peer(
            "pgqueuer", version, None, f"pgqueuer finished {drain.jobs} of {jobs} jobs; no figure"
        )
    return Peer("pgqueuer", version, drain)


async def _pgqueuer_enqueue(library: Any, url: str, jobs: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        queries = library.Queries.from_psycopg_connection(connection)
        if not await queries.schema_is_installed():
            await queries.install()
        await queries.enqueue([ENTRYPOINT] * jobs, [None] * jobs, [0] * jobs)


def _pgqueuer_drain(library: Any, url: str, jobs: int, workers: int) -> Drain:
    managers: list[tuple[asyncio.AbstractEventLoop, Any]] = []
    done = itertools.count(1)

    def stop_all() -> None:
        # Drain mode would notice the empty queue by itself, but only once every worker's
        # buffered completions are flushed, seconds later; that tail is not measured anyway.
        for loop, manager in managers:
            loop.call_soon_threadsafe(manager.shutdown.set)

    async def work(ready: Callable[[], None], finished: Callable[[], None]) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
            manager = library.QueueManager(library.Queries(library.PsycopgDriver(connection)))
            managers.append((asyncio.get_running_loop(), manager))

            async def noop(job: Any) -> None:
                finished()
                if next(done) == jobs:
                    stop_all()

            manager.entrypoint(ENTRYPOINT)(noop)
            ready()
            await manager.run(
                batch_size=BATCH,
                mode=_drain_mode(),
                dequeue_timeout=timedelta(seconds=0.2),
                # Its buffers flush on a timer of an eighth of this (default 30 s), and the
                # exit waits for them; no job here lives long enough to need a heartbeat.
                heartbeat_timeout=timedelta(seconds=2),
                log_aggregation_interval=timedelta(0),
            )

    return _race(workers, lambda _slot, ready, finished: asyncio.run(work(ready, finished)))


def _drain_mode() -> Any:
    types: Any = importlib.import_module("pgqueuer.types")
    return types.QueueExecutionMode.drain
