"""The queue gauges: job counts, oldest queued age and frames waiting, for every daemon's
/metrics, computed once per interval for the whole fleet (a claimed fleet pass)."""

from __future__ import annotations

from typing import Any

import psycopg

from argus_embedder import metrics
from argus_embedder.gateways import passes, queue
from argus_embedder.services import periodic
from argus_embedder.settings import Settings

QUEUE_STATS_NAME = "queue-stats"
QUEUE_STATS_SECONDS = 15.0  # the fleet computes the queue snapshot about this often
QUEUE_STATS_TICK = 5.0  # each daemon refreshes its gauges from the snapshot this often


def queue_snapshot(connection: psycopg.Connection[Any], model: str) -> dict[str, Any]:
    """Job counts, oldest queued age and frames waiting: what the queue gauges show. The
    same cheap reads as status (gateways.queue): partial indexes counted up to a cap,
    planner estimates beyond, a sample of the queue's frames; none grows with the tables."""
    stats = queue.stats(connection)
    return {
        "jobs": stats.jobs,
        "oldest_queued_seconds": stats.oldest_queued_seconds,
        "frames_waiting": queue.frames_waiting(
            connection, model, queued=stats.jobs["queued"]
        ).value,
    }


def task(config: Settings) -> periodic.Task:
    """Keep this daemon's queue gauges current. The fleet computes the snapshot about
    every QUEUE_STATS_SECONDS (one daemon at a time, a claimed fleet-wide pass) and
    every daemon exports the same stored snapshot, so `max` across instances is right
    and the cost does not grow with the number of daemons."""

    def run(connection: psycopg.Connection[Any], stopping: periodic.Stopping) -> None:
        claimed = passes.claim(
            connection,
            QUEUE_STATS_NAME,
            interval=QUEUE_STATS_SECONDS,
            worker_id=config.worker_id,
        )
        if claimed:
            passes.record(
                connection,
                QUEUE_STATS_NAME,
                worker_id=config.worker_id,
                result=queue_snapshot(connection, config.model),
            )
        last = passes.latest(connection, QUEUE_STATS_NAME)
        if last is None or last.finished_at is None:
            return
        snapshot = last.result
        metrics.set_queue_stats(
            {state: int(count) for state, count in snapshot.get("jobs", {}).items()},
            snapshot.get("oldest_queued_seconds"),
            int(snapshot.get("frames_waiting", 0)),
        )

    return periodic.Task("queue stats", QUEUE_STATS_TICK, run)
