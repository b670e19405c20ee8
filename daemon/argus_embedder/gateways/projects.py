"""The projects gateway (argus.projects): the operator's fair-share settings per project
(weight, cap on running jobs), and each project's part of the queue.

The claim (argus.claim_jobs) reads the settings; only this module writes them.
A project with no row has weight 1 and no cap; the NULL project (jobs whose
frames name none) is one more project and always has those defaults.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from argus_embedder import db

MAX_WEIGHT = 10_000  # argus.projects' CHECK (weight BETWEEN 1 AND 10000)
MAX_RUNNING_LIMIT = 2**31 - 1  # an integer column
BACKLOG_SAMPLE = 1000  # queued jobs whose frames are counted exactly, shared out per project


@dataclasses.dataclass(frozen=True)
class Saved:
    """A project's settings after `save`, and what they were (None: no row before)."""

    project_id: str
    weight: int
    max_running: int | None
    updated_at: datetime.datetime
    previous_weight: int | None
    previous_max_running: int | None
    created: bool


@dataclasses.dataclass(frozen=True)
class Backlog:
    """One project's part of the queue."""

    project_id: str | None
    configured: bool  # it has a settings row (else weight 1, no cap)
    weight: int
    max_running: int | None
    queued: int
    running: int
    frames_waiting: int
    frames_waiting_estimated: bool  # scaled up from a sample of its queued jobs


@dataclasses.dataclass(frozen=True)
class RecentWrites:
    """Frames the fleet's jobs wrote over the last `seconds` (the rates' window, up to
    now), per project (None: jobs of no project); the fleet's is their sum."""

    seconds: float
    frames: dict[str | None, int]

    @property
    def total(self) -> int:
        return sum(self.frames.values())


def save(
    connection: psycopg.Connection[Any],
    project_id: str,
    *,
    weight: int | None,
    max_running: int | None,
    set_cap: bool,
) -> Saved:
    """Create or update a project's settings: a None weight keeps the current one (1 for a
    new row); the cap changes only with `set_cap`, to `max_running` (None: no cap)."""
    with connection.cursor(row_factory=class_row(Saved)) as cursor:
        saved = cursor.execute(
            db.queries()["project_set"],
            {
                "project_id": project_id,
                "weight": weight,
                "max_running": max_running,
                "set_cap": set_cap,
            },
        ).fetchone()
    assert saved is not None
    return saved


def backlog(
    connection: psycopg.Connection[Any],
    *,
    model: str | None,
    limit: int | None,
    include_idle: bool,
    sample: int | None = None,
) -> tuple[list[Backlog], int]:
    """Projects by frames waiting, biggest first: at most `limit` (None: all), and how
    many there are in all. Projects with queued or running jobs are listed; with
    `include_idle`, so are those with a settings row and nothing waiting. `model` is the
    configured one, which NULL-model jobs count against. `sample`: queued jobs
    whose frames are counted (default BACKLOG_SAMPLE)."""
    if sample is None:
        sample = BACKLOG_SAMPLE
    rows = connection.execute(
        db.queries()["project_backlog"],
        {"model": model, "limit": limit, "all": include_idle, "sample": sample},
    ).fetchall()
    total = int(rows[0]["projects"]) if rows else 0
    fields = [field.name for field in dataclasses.fields(Backlog)]
    return [Backlog(**{name: row[name] for name in fields}) for row in rows], total


def recent_writes(connection: psycopg.Connection[Any], *, window: float, jobs: int) -> RecentWrites:
    """Frames written in the last `window` seconds per project: one read for the fleet's
    rate and each project's (bounded to the running jobs and the last `jobs` finished
    ones: the window shrinks to the oldest of those when more finished)."""
    rows = connection.execute(
        db.queries()["recent_writes"], {"window": window, "jobs": jobs}
    ).fetchall()
    return RecentWrites(
        seconds=float(rows[0]["seconds"]),
        frames={row["project_id"]: int(row["frames"]) for row in rows if row["frames"]},
    )
