"""Periodic passes on a daemon's background thread, and the fleet-wide ones among them.

Some work belongs to the fleet, not to each daemon: the reconciler's scan and
the queue-statistics snapshot should run once per interval however many
daemons there are. A daemon claims the next run of such a pass in
argus.fleet_passes (under a non-blocking advisory transaction lock, so
claimers never queue behind each other): the claim succeeds only if the last
run started at least an interval ago. Whoever gets there first does the work
and records what it found; the others read that record. No leader, no
session lock (works behind PgBouncer), and a daemon that dies mid-pass only
delays the next run by an interval.

`service()` drives a list of tasks on one supervised `lifecycle.Service` with
its own connection, which it re-opens with backoff after a database restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from argus_embedder import db, errors
from argus_embedder.runtime import metrics
from argus_embedder.services import lifecycle

log = logging.getLogger(__name__)

_SLICE = 0.5  # seconds; how quickly the thread notices a stop request
_RETRY_MAX = 30.0

Stopping = Callable[[], bool]


@dataclasses.dataclass(frozen=True)
class Task:
    """Work a daemon does every `interval` seconds on the background connection."""

    name: str
    interval: float
    run: Callable[[psycopg.Connection[Any], Stopping], None]
    first_delay: float = 0.0
    on_stop: Callable[[psycopg.Connection[Any]], None] | None = None


@dataclasses.dataclass(frozen=True)
class PassRecord:
    """The last run of a fleet-wide pass: when, by whom, and what it found."""

    name: str
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    worker_id: str | None
    result: dict[str, Any]
    age_seconds: float | None  # since it finished; None while it runs


# --- fleet-wide passes (argus.fleet_passes) --------------------------------------


def claim(
    connection: psycopg.Connection[Any], name: str, *, interval: float, worker_id: str
) -> bool:
    """Claim this interval's run of pass `name`; False if another daemon has it."""
    q = db.queries()
    due = connection.execute(q["pass_due"], {"name": name, "interval": interval}).fetchone()
    if due is not None and not due["due"]:
        return False
    with connection.transaction():
        locked = connection.execute(q["pass_try_lock"], {"name": name}).fetchone()
        if not (locked and locked["locked"]):
            return False
        row = connection.execute(
            q["pass_claim"],
            {"name": name, "interval": interval, "worker_id": worker_id},
        ).fetchone()
    return row is not None


def record(
    connection: psycopg.Connection[Any],
    name: str,
    *,
    worker_id: str,
    result: Mapping[str, Any],
) -> None:
    """Store what this daemon's run of pass `name` found."""
    connection.execute(
        db.queries()["pass_record"],
        {"name": name, "worker_id": worker_id, "result": Jsonb(dict(result))},
    )


def latest(connection: psycopg.Connection[Any], name: str) -> PassRecord | None:
    row = connection.execute(db.queries()["pass_latest"], {"name": name}).fetchone()
    return None if row is None else PassRecord(**row)


def records(connection: psycopg.Connection[Any], prefix: str) -> list[PassRecord]:
    """Every pass whose name starts with `prefix` (e.g. one reconciler per model)."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = connection.execute(db.queries()["passes_like"], {"pattern": pattern}).fetchall()
    return [PassRecord(**row) for row in rows]


# --- the background thread ---------------------------------------------------------


@contextlib.contextmanager
def running(url: str, tasks: Sequence[Task], *, stop: threading.Event) -> Iterator[None]:
    """Run `tasks` on a background service until `stop` is set or the block ends."""
    with service(url, tasks, stop=stop):
        yield


def service(url: str, tasks: Sequence[Task], *, stop: threading.Event) -> lifecycle.Service:
    """`tasks` on one supervised thread with its own connection (not started yet)."""
    runner = _Runner(url, list(tasks))
    runner.service = lifecycle.Service(
        "periodic", runner.step, interval=_SLICE, on_stop=runner.shut_down, stop=stop
    )
    return runner.service


class _Runner:
    """Runs whichever task is due next; the service calls `step` until stopped."""

    def __init__(self, url: str, tasks: list[Task]) -> None:
        self.url = url
        self.tasks = tasks
        self.service: lifecycle.Service | None = None
        self._connection: psycopg.Connection[Any] | None = None
        self._failures = 0
        now = time.monotonic()
        self._due = {id(task): now + task.first_delay for task in tasks}

    def stopping(self) -> bool:
        return self.service is not None and self.service.stopping()

    def step(self) -> float:
        """Run the task that is due, if any; returns the seconds until the next one is."""
        if not self.tasks:
            return 3600.0
        task = min(self.tasks, key=lambda candidate: self._due[id(candidate)])
        wait = self._due[id(task)] - time.monotonic()
        if wait > 0:
            return wait
        self._due[id(task)] = time.monotonic() + self._run(task)
        return max(0.0, min(self._due.values()) - time.monotonic())

    def _run(self, task: Task) -> float:
        """Run `task` once; returns the seconds until its next run."""
        try:
            task.run(self._connect(), self.stopping)
        except (psycopg.OperationalError, errors.ArgusError) as error:
            # The database went away (restart, failover) or is not reachable yet.
            metrics.DB_ERRORS.inc()
            self._close()
            self._failures += 1
            delay = min(_RETRY_MAX, 2.0 ** min(self._failures, 5))
            log.warning("%s: %s; retrying in %.0fs", task.name, errors.first_line(error), delay)
            return delay
        except psycopg.Error as error:
            log.warning("%s failed: %s", task.name, errors.first_line(error))
            if self._connection is not None and self._connection.broken:
                self._close()
            return task.interval
        except Exception:  # a bug in one task must not stop the others
            log.exception("%s failed", task.name)
            return task.interval
        self._failures = 0
        return task.interval

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            self._connection = db.connect(self.url, autocommit=True)
        return self._connection

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
        self._connection = None

    def shut_down(self) -> None:
        connection = self._connection
        # Best effort on the open connection only: a stop must not wait on a dead database.
        for task in self.tasks:
            if task.on_stop is None or connection is None or connection.broken:
                continue
            try:
                task.on_stop(connection)
            except psycopg.Error as error:
                log.debug("%s: not recorded at stop: %s", task.name, errors.first_line(error))
        self._close()
