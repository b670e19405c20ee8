"""The worker registry service: announce this daemon, keep its row fresh, mark it stopped."""

from __future__ import annotations

from typing import Any

import psycopg

from argus_embedder.gateways import workers
from argus_embedder.services import periodic


def task(worker_id: str, *, model: str, device: str, version: str) -> periodic.Task:
    """Announce this daemon, keep its row fresh, and mark it stopped at the end."""
    registration = _Registration(worker_id, model=model, device=device, version=version)
    return periodic.Task(
        "worker registry",
        workers.HEARTBEAT_SECONDS,
        registration.run,
        on_stop=registration.stopped,
    )


class _Registration:
    def __init__(self, worker_id: str, *, model: str, device: str, version: str) -> None:
        self.worker_id = worker_id
        self.model, self.device, self.version = model, device, version
        self.announced = False

    def run(self, connection: psycopg.Connection[Any], stopping: periodic.Stopping) -> None:
        if not workers.seen(connection, self.worker_id) or not self.announced:
            # First round, or the row was forgotten meanwhile.
            workers.announce(
                connection,
                self.worker_id,
                model=self.model,
                device=self.device,
                version=self.version,
            )
            self.announced = True
        workers.forget(connection)

    def stopped(self, connection: psycopg.Connection[Any]) -> None:
        workers.stopped(connection, self.worker_id)
