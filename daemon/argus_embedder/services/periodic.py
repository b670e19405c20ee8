"""Periodic tasks on a daemon's background service (the indexer, the reconciler, the
queue gauges, the registry), each every `interval` seconds.

`service()` drives a list of tasks on one supervised `lifecycle.Service` with
its own connection, which it re-opens with backoff after a database restart.
Tasks that belong to the fleet rather than to each daemon claim their run in
argus.fleet_passes (gateways.passes) first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg

from argus_embedder import db, errors, lifecycle, metrics

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
