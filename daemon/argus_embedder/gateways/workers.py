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

from argus_embedder import db
from argus_embedder.services import periodic

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
    rows = connection.execute(db.queries()["status_workers"], {"seconds": seconds}).fetchall()
    return [WorkerInfo(**row) for row in rows]


def task(worker_id: str, *, model: str, device: str, version: str) -> periodic.Task:
    """Announce this daemon, keep its row fresh, and mark it stopped at the end."""
    registration = _Registration(worker_id, model=model, device=device, version=version)
    return periodic.Task(
        "worker registry", HEARTBEAT_SECONDS, registration.run, on_stop=registration.stopped
    )


class _Registration:
    def __init__(self, worker_id: str, *, model: str, device: str, version: str) -> None:
        self.worker_id = worker_id
        self.facts = {"model": model, "device": device, "version": version}
        self.announced = False

    def run(self, connection: psycopg.Connection[Any], stopping: periodic.Stopping) -> None:
        q = db.queries()
        seen = connection.execute(q["worker_seen"], {"worker_id": self.worker_id}).fetchone()
        if seen is None or not self.announced:  # first round, or the row was forgotten
            connection.execute(q["worker_announce"], {"worker_id": self.worker_id, **self.facts})
            self.announced = True
        connection.execute(q["workers_forget"], {"seconds": FORGET_SECONDS})

    def stopped(self, connection: psycopg.Connection[Any]) -> None:
        connection.execute(db.queries()["worker_stopped"], {"worker_id": self.worker_id})
