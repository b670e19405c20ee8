"""argus.fleet_passes: fleet-wide periodic passes, one run per interval for the fleet.

Some work belongs to the fleet, not to each daemon: the reconciler's scan and
the queue-statistics snapshot should run once per interval however many
daemons there are. A daemon claims the next run of such a pass (under a
non-blocking advisory transaction lock, so claimers never queue behind each
other): the claim succeeds only if the last run started at least an interval
ago. Whoever gets there first does the work and records what it found; the
others read that record. No leader, no session lock (works behind PgBouncer),
and a daemon that dies mid-pass only delays the next run by an interval.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from argus_embedder import db

RECONCILER_PREFIX = "reconcile:"  # + model: the reconciler's pass for that model


@dataclasses.dataclass(frozen=True)
class PassRecord:
    """The last run of a fleet-wide pass: when, by whom, and what it found."""

    name: str
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    worker_id: str | None
    result: dict[str, Any]
    age_seconds: float | None  # since it finished; None while it runs


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
    with connection.cursor(row_factory=class_row(PassRecord)) as cursor:
        return cursor.execute(db.queries()["pass_latest"], {"name": name}).fetchone()


def records(connection: psycopg.Connection[Any], prefix: str) -> list[PassRecord]:
    """Every pass whose name starts with `prefix` (e.g. one reconciler per model)."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    with connection.cursor(row_factory=class_row(PassRecord)) as cursor:
        return cursor.execute(db.queries()["passes_like"], {"pattern": pattern}).fetchall()


def reconciler_records(connection: psycopg.Connection[Any]) -> dict[str, PassRecord]:
    """The reconciler's last pass per model (model -> record)."""
    return {
        record.name.removeprefix(RECONCILER_PREFIX): record
        for record in records(connection, RECONCILER_PREFIX)
    }
