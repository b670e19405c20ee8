"""The worker registry (argus.workers): which daemon runs which model on which device.

Each daemon announces itself when it starts, refreshes `seen_at` while it
runs, and marks itself stopped on the way out. `status` joins running jobs to
it, so the device behind every job is on screen: a GPU host whose daemon fell
back to the CPU shows "cpu (no CUDA device found)" there, not only in a log.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from argus_embedder import db

HEARTBEAT_SECONDS = 30.0
SHOWN_SECONDS = 5 * HEARTBEAT_SECONDS  # status lists daemons seen this recently
FORGET_SECONDS = 7 * 24 * 3600.0  # registry rows of daemons gone this long are deleted


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    model: str
    device: str
    version: str
    started_at: datetime.datetime
    stopped_at: datetime.datetime | None
    seen_seconds_ago: float
    running_jobs: int


def recent(connection: psycopg.Connection[Any], seconds: float = SHOWN_SECONDS) -> list[WorkerInfo]:
    """Daemons seen within `seconds`, stopped ones included (they say so)."""
    with connection.cursor(row_factory=class_row(WorkerInfo)) as cursor:
        return cursor.execute(db.queries()["workers_recent"], {"seconds": seconds}).fetchall()


def seen(connection: psycopg.Connection[Any], worker_id: str) -> bool:
    """Refresh this daemon's row; False when it has none (never announced, or forgotten)."""
    return (
        connection.execute(db.queries()["worker_seen"], {"worker_id": worker_id}).fetchone()
        is not None
    )


def announce(
    connection: psycopg.Connection[Any], worker_id: str, *, model: str, device: str, version: str
) -> None:
    connection.execute(
        db.queries()["worker_announce"],
        {"worker_id": worker_id, "model": model, "device": device, "version": version},
    )


def stopped(connection: psycopg.Connection[Any], worker_id: str) -> None:
    connection.execute(db.queries()["worker_stopped"], {"worker_id": worker_id})


def forget(connection: psycopg.Connection[Any], seconds: float = FORGET_SECONDS) -> None:
    """Delete the rows of daemons gone for `seconds` (hostname:pid ids pile up otherwise)."""
    connection.execute(db.queries()["workers_forget"], {"seconds": seconds})
