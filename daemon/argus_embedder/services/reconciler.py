"""The reconciler: no frame is left without a vector, whoever forgot to enqueue it.

Every ARGUS_RECONCILE_INTERVAL seconds one daemon of the fleet (a claimed
fleet-wide pass, see `periodic`) scans all frames for rows missing for its
configured model and enqueues a job for each such video that has no queued or
running job covering the model. That catches frames inserted after their
video's job listed its frames, and videos whose frame stage never enqueued.

The scan walks frame ids in slices of CHUNK_FRAMES: each slice is one short
transaction, a merge anti join of two index-only scans over that id range, so
no statement's cost grows with the table and nothing holds a snapshot for long.
After each slice the next one starts at the next existing frame id, so a gap in
the ids (a frame inserted with an id of its own) costs one index probe.

Failed work is not retried forever: a video whose latest finished job for the
model failed (or was cancelled) is skipped until it gets a frame newer than
that job's start, or an operator runs `argus-embedder retry ID`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from argus_embedder import db, metrics
from argus_embedder.gateways import passes, queue
from argus_embedder.services import periodic
from argus_embedder.settings import Settings

log = logging.getLogger(__name__)

# Frame ids per slice: tens of milliseconds each. Slices start at multiples of
# it, so with segments of the same span each slice reads exactly one segment.
CHUNK_FRAMES = 100_000
PRIORITY = 0  # missed frames are fresh work, not a backfill
SETTLE_SECONDS = 60.0  # at most this long, a video still receiving frames is left alone
NAME_PREFIX = passes.RECONCILER_PREFIX


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What one reconciler pass found and did."""

    missing_frames: int  # frames without a row for the model (in-flight jobs' included)
    missing_videos: int
    enqueued: int  # jobs this pass added
    seconds: float
    complete: bool  # False when stopped, or when another daemon's pass overlapped

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pass_name(model: str) -> str:
    return NAME_PREFIX + model


def reconcile(
    connection: psycopg.Connection[Any],
    model: str,
    *,
    priority: int = PRIORITY,
    chunk: int = CHUNK_FRAMES,
    settle_seconds: float = 0.0,
    stopping: periodic.Stopping = lambda: False,
) -> PassResult:
    """One full scan for `model` (no claim: use `run_pass` in a fleet). Videos with a
    frame younger than `settle_seconds` count as missing but get no job yet."""
    started = time.monotonic()
    q = db.queries()
    bounds = connection.execute(q["reconcile_bounds"]).fetchone()
    assert bounds is not None
    first, last = bounds["first"], bounds["last"]
    missing_frames = missing_videos = enqueued = 0
    complete = True
    low = 0 if first is None else first - first % chunk
    while last is not None and low <= last:
        if stopping():
            complete = False
            break
        high = low + chunk
        with connection.transaction():
            # Two passes overlap only when one outlives the interval: the later one yields.
            locked = connection.execute(
                q["pass_try_lock"], {"name": "slice:" + pass_name(model)}
            ).fetchone()
            if not (locked and locked["locked"]):
                complete = False
                break
            connection.execute(q["reconcile_plan"])
            rows = connection.execute(
                q["reconcile_missing"], {"low": low, "high": high, "model": model}
            ).fetchall()
            if rows:
                added = queue.enqueue_missing(
                    connection,
                    [row["video_id"] for row in rows],
                    model=model,
                    configured_model=model,
                    priority=priority,
                    respect_failures=True,
                    settle_seconds=settle_seconds,
                )
                enqueued += len(added)
                metrics.RECONCILER_ENQUEUED.inc(len(added))
        missing_frames += sum(int(row["frames"]) for row in rows)
        missing_videos += len(rows)  # a video spanning two slices counts twice: rare, harmless
        following = connection.execute(q["reconcile_next"], {"after": high}).fetchone()
        if following is None or following["next"] is None:
            break
        low = following["next"] - following["next"] % chunk
    return PassResult(
        missing_frames=missing_frames,
        missing_videos=missing_videos,
        enqueued=enqueued,
        seconds=time.monotonic() - started,
        complete=complete,
    )


def run_pass(
    connection: psycopg.Connection[Any],
    model: str,
    *,
    interval: float,
    worker_id: str,
    stopping: periodic.Stopping = lambda: False,
) -> PassResult | None:
    """Claim this interval's pass for `model` and run it; None if another daemon has it."""
    name = pass_name(model)
    if not passes.claim(connection, name, interval=interval, worker_id=worker_id):
        return None
    settle = min(interval, SETTLE_SECONDS)
    result = reconcile(connection, model, settle_seconds=settle, stopping=stopping)
    passes.record(connection, name, worker_id=worker_id, result=result.as_json())
    if result.enqueued or result.missing_frames:
        log.info(
            "reconciler: %d frame(s) of %d video(s) lack %s rows; enqueued %d job(s) (%.2fs)",
            result.missing_frames,
            result.missing_videos,
            model,
            result.enqueued,
            result.seconds,
        )
    return result


def task(config: Settings) -> periodic.Task:
    """The daemon's reconciler: try to claim the pass a few times per interval, so the
    fleet's passes stay about an interval apart whichever daemon runs them, and
    export the last complete pass's missing frames (the same value on every daemon)."""
    interval = config.reconcile_interval
    tick = min(interval, max(1.0, interval / 4))

    def run(connection: psycopg.Connection[Any], stopping: periodic.Stopping) -> None:
        run_pass(
            connection,
            config.model,
            interval=interval,
            worker_id=config.worker_id,
            stopping=stopping,
        )
        last = passes.latest(connection, pass_name(config.model))
        if last is not None and last.result.get("complete"):
            metrics.RECONCILER_MISSING.set(int(last.result.get("missing_frames", 0)))

    return periodic.Task("reconciler", tick, run, first_delay=tick)


@contextlib.contextmanager
def running(config: Settings, url: str, stop: threading.Event) -> Iterator[None]:
    """The reconciler alone on its own background thread and connection, until `stop`
    or the end of the block (the daemon runs it beside its other periodic tasks)."""
    with periodic.running(url, [task(config)], stop=stop):
        yield
