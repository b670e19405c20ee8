"""The per-model vector index: registration, segments, and bulk builds of sealed segments.

Each model's vectors live in their own partition of argus.frame_embeddings,
split into segments of `segment_rows` frame ids. Writes land in segments with
no ANN index (so they run at the unindexed COPY rate); once a segment's frame
range is complete it is sealed and its index is built in one bulk pass, by one
daemon at a time. `search` merges the ANN scans of sealed segments with an
exact scan of the rest, so a committed vector is searchable at once.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg.rows import class_row

from argus_embedder import db, errors

log = logging.getLogger(__name__)

KINDS = ("hnsw", "ivfflat", "none")
DEFAULT_KIND = "hnsw"
QUIET_SECONDS = 600.0  # a complete-range segment with no writes this long seals anyway
AHEAD = 2  # segments created past the one holding the newest frame
PUBLISH_ATTEMPTS = 8  # tries to publish a unit while stragglers hold its segments


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    model: str
    dimension: int
    index_kind: str
    partition_name: str
    segment_rows: int


def info(connection: psycopg.Connection[Any], model: str) -> ModelInfo | None:
    with connection.cursor(row_factory=class_row(ModelInfo)) as cursor:
        return cursor.execute(db.queries()["model_info"], {"model": model}).fetchone()


def register(
    connection: psycopg.Connection[Any],
    model: str,
    dimension: int,
    kind: str | None = None,
    *,
    segment_rows: int | None = None,
) -> ModelInfo:
    """Register `model` (its partition), or set its index kind or segment size; idempotent.

    Without `kind` and `segment_rows` (what a daemon calls at start) a registered
    model is left as it is and a new one gets hnsw; a role holding only
    argus_worker may do that. Setting either is the schema owner's (`migrate
    --model M --index K`); a model's segment size is fixed once it has segments.
    """
    current = info(connection, model)
    if current is not None and current.dimension != dimension:
        raise errors.ConfigError(
            f"model {model} is registered with dimension {current.dimension}, "
            f"but the checkpoint gives {dimension}"
        )
    if kind is None and segment_rows is None:
        if current is not None:
            return current
        _register(connection, "register_model", {"model": model, "dimension": dimension})
    else:
        try:
            # Sent even when unchanged: the call also drops ANN indexes the
            # segments do not record (orphans of an interrupted change).
            _register(
                connection,
                "ensure_model_index",
                {
                    "model": model,
                    "dimension": dimension,
                    "kind": kind or (current.index_kind if current else DEFAULT_KIND),
                    "segment_rows": segment_rows,
                },
            )
        except psycopg.errors.InsufficientPrivilege as error:
            raise errors.ConfigError(
                f"changing the index kind or segment size of {model} is the schema owner's: "
                "run `argus-embedder migrate --model MODEL --index KIND` as the owner"
            ) from error
    registered = info(connection, model)
    assert registered is not None
    return registered


def _register(connection: psycopg.Connection[Any], block: str, params: dict[str, Any]) -> None:
    try:
        with connection.transaction():
            connection.execute(db.queries()[block], params)
    except psycopg.errors.InvalidParameterValue as error:
        raise errors.ConfigError(errors.first_line(error)) from error


class Segments:
    """Finds (or, failing that, creates) the segments a batch writes into, once per
    segment per process.

    The indexer service creates segments ahead of the write frontier
    (`precreate`), so a write normally only reads argus.segments. A segment that is
    not there yet is created here (CREATE TABLE, then ATTACH: no lock that a reader
    holds); its definer function waits at most its lock_timeout for a lock, and a
    write that could not get one fails as a transient database error, retried.
    """

    def __init__(self, model: ModelInfo) -> None:
        self.model = model
        self._known: set[int] = set()
        self._lock = threading.Lock()

    def ensure(self, connection: psycopg.Connection[Any], frame_ids: Iterable[int]) -> None:
        rows = self.model.segment_rows
        with self._lock:
            missing = {frame_id // rows * rows for frame_id in frame_ids} - self._known
        if not missing:
            return
        q = db.queries()
        params = {"model": self.model.model, "lower_bounds": sorted(missing)}
        # Own short transactions: nothing here may be held across a batch's COPY.
        with connection.transaction():
            found = {row["lower_bound"] for row in connection.execute(q["known_segments"], params)}
        if missing - found:
            frame_ids = sorted(missing - found)  # a segment's lower bound is one of its ids
            try:
                with connection.transaction():
                    connection.execute(
                        q["ensure_segments"], {"model": self.model.model, "frame_ids": frame_ids}
                    ).fetchall()
            except psycopg.errors.LockNotAvailable:
                log.warning(
                    "segments %s of %s: not created within the lock timeout (a lock on the "
                    "model's partition or on argus.frames is held); the write is retried",
                    frame_ids,
                    self.model.model,
                )
                raise
            found |= set(frame_ids)
        with self._lock:
            self._known.update(found)


def precreate(connection: psycopg.Connection[Any], model: str, *, ahead: int = AHEAD) -> list[int]:
    """Attach the segment holding the newest frame and `ahead` past it, if missing,
    so writes find them there; returns the lower bounds created."""
    with connection.transaction():
        rows = connection.execute(
            db.queries()["precreate_segments"], {"model": model, "ahead": ahead}
        ).fetchall()
    return [row["lower_bound"] for row in rows]


@dataclasses.dataclass(frozen=True)
class Unit:
    """A search unit: a private, ANN-indexed copy of the vectors of a frame-id range."""

    id: int
    model: str
    lower_bound: int
    upper_bound: int
    tier: int
    kind: str
    table_name: str
    state: str
    rows: int | None
    trained_rows: int | None  # rows when its index was built; an ivfflat unit grows past it
    build_seconds: float | None


@dataclasses.dataclass(frozen=True)
class Append:
    """An ivfflat unit grown in place by a sealed segment or a smaller adjacent unit."""

    unit_id: int
    table_name: str
    lower_bound: int
    upper_bound: int
    appended: int


def next_unit(
    connection: psycopg.Connection[Any],
    model: str,
    *,
    fanout: int,
    tier0_only: bool,
    quiet_seconds: float = QUIET_SECONDS,
) -> int | None:
    """The unit to work on next (one under way, else a sealed segment's, else a merge),
    created with its straggler triggers and committed; None when there is nothing to do
    or another daemon holds the indexer lock."""
    with connection.transaction():
        row = connection.execute(
            db.queries()["unit_next"],
            {
                "model": model,
                "fanout": fanout,
                "quiet_seconds": quiet_seconds,
                "tier0_only": tier0_only,
            },
        ).fetchone()
    return None if row is None else row["unit_id"]


def append_next(
    connection: psycopg.Connection[Any], model: str, *, quiet_seconds: float = QUIET_SECONDS
) -> Append | None:
    """Grow one of an ivfflat model's live units by what lies right above it (a sealed
    segment, or a smaller live unit), in one commit; None when there is nothing to append
    (always for other kinds), a unit is being built, or another daemon holds the lock."""
    try:
        with connection.transaction(), connection.cursor(row_factory=class_row(Append)) as cursor:
            grown = cursor.execute(
                db.queries()["unit_append"], {"model": model, "quiet_seconds": quiet_seconds}
            ).fetchone()
    except psycopg.errors.LockNotAvailable:
        return None  # a straggler's write in flight on the segment: the next pass appends
    if grown is not None:
        log.info(
            "appended %s rows of %s to unit %s, now [%d, %d)",
            grown.appended,
            model,
            grown.table_name,
            grown.lower_bound,
            grown.upper_bound,
        )
    return grown


def build_unit(
    connection: psycopg.Connection[Any],
    unit_id: int,
    *,
    publish_attempts: int = PUBLISH_ATTEMPTS,
    stopping: Callable[[], bool] = lambda: False,
) -> Unit | None:
    """Fill `unit_id` (copy and bulk index, off everyone's path), load its index into
    shared buffers, then publish it; the unit once live, None when another daemon holds
    the lock or the publish found its source segments busy every time (it stays filled:
    the next pass publishes it)."""
    q = db.queries()
    with connection.transaction():
        filled = connection.execute(q["unit_fill"], {"unit_id": unit_id}).fetchone()
    if filled is None or filled["rows"] is None:
        return None
    # A bulk build bypasses the buffer pool: without this the first searches after the
    # publish would read every index page they touch from outside it.
    with connection.transaction():
        connection.execute(q["unit_prewarm"], {"unit_id": unit_id})
    for attempt in range(publish_attempts):
        try:
            with connection.transaction():
                published = connection.execute(q["unit_publish"], {"unit_id": unit_id}).fetchone()
        except psycopg.errors.LockNotAvailable:
            published = None  # a straggler's write in flight: try again in a moment
        if published is not None and published["published"]:
            return unit(connection, unit_id)
        if stopping():
            break
        time.sleep(min(2.0, 0.05 * 2**attempt))
    return None


def unit(connection: psycopg.Connection[Any], unit_id: int) -> Unit | None:
    with connection.cursor(row_factory=class_row(Unit)) as cursor:
        return cursor.execute(db.queries()["unit"], {"unit_id": unit_id}).fetchone()


def units(connection: psycopg.Connection[Any], model: str) -> list[Unit]:
    """`model`'s units, every state, by range."""
    with connection.cursor(row_factory=class_row(Unit)) as cursor:
        return cursor.execute(db.queries()["units"], {"model": model}).fetchall()


def drop_retired(connection: psycopg.Connection[Any], model: str, *, grace_seconds: float) -> int:
    """Drop the units retired more than `grace_seconds` ago; returns how many."""
    try:
        with connection.transaction():
            row = connection.execute(
                db.queries()["drop_retired_units"], {"model": model, "grace_seconds": grace_seconds}
            ).fetchone()
    except psycopg.errors.LockNotAvailable:
        return 0  # a search still reads one: the next pass drops it
    return 0 if row is None else int(row["dropped"])


def prune_changes(connection: psycopg.Connection[Any], model: str) -> int:
    """Forget the stragglers logged for ranges no unit is being built over (no publish
    would ever replay them); returns how many."""
    try:
        with connection.transaction():
            row = connection.execute(
                db.queries()["prune_unit_changes"], {"model": model}
            ).fetchone()
    except psycopg.errors.LockNotAvailable:
        return 0  # a straggler's write holds the log: the next pass prunes
    return 0 if row is None else int(row["pruned"])


def build_sealed(
    connection: psycopg.Connection[Any], model: str, *, quiet_seconds: float = QUIET_SECONDS
) -> list[str]:
    """Index every sealed, uncovered segment of `model`: a tier-0 unit each, or, for an
    ivfflat model, appended to the live unit just below it where there is one.

    One builder in the fleet at a time (the indexer's transaction advisory lock);
    returns the unit built or grown at each step ([] while another daemon builds).
    """
    built: list[str] = []
    while True:
        grown = append_next(connection, model, quiet_seconds=quiet_seconds)
        if grown is not None:
            built.append(grown.table_name)
            continue
        unit_id = next_unit(
            connection, model, fanout=2, tier0_only=True, quiet_seconds=quiet_seconds
        )
        if unit_id is None:
            return built
        started = time.monotonic()
        done = build_unit(connection, unit_id)
        if done is None:
            return built  # another daemon is building, or the publish will be retried
        if done.tier > 0:
            continue  # a merge the compactor left under way, finished here
        built.append(done.table_name)
        log.info(
            "indexed segment %s of %s (%s rows) in %.1fs",
            done.lower_bound,
            model,
            done.rows,
            time.monotonic() - started,
        )


def unregister(connection: psycopg.Connection[Any], model: str, *, lock_timeout: str) -> None:
    """Drop `model`'s partition (every segment and index) and its registration, inside the
    caller's transaction, waiting at most `lock_timeout` for the table lock (the drop
    must never queue in front of searches and writes behind a long query)."""
    connection.execute(db.queries()["prune_lock_timeout"], {"timeout": lock_timeout})
    connection.execute(db.queries()["unregister_model"], {"model": model})


def models(connection: psycopg.Connection[Any]) -> list[ModelInfo]:
    """Every registered model, by name."""
    with connection.cursor(row_factory=class_row(ModelInfo)) as cursor:
        return cursor.execute(db.queries()["models"]).fetchall()
