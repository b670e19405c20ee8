"""The frames gateway: what the frame stage does (insert frame rows), for `ingest` and tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from argus_embedder import db, errors
from argus_embedder.gateways import counting

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclasses.dataclass(frozen=True)
class NewFrame:
    video_id: str
    frame_index: int
    image_uri: str
    project_id: str | None = None
    timestamp_ms: int | None = None


def image_files(paths: Iterable[str]) -> list[Path]:
    """Expand files and folders into image files, in a stable (sorted) order."""
    found: list[Path] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise errors.UserInputError(f"{text}: no such file or folder")
    if not found:
        raise errors.UserInputError("no image files found in the given paths")
    return found


def insert(connection: psycopg.Connection[Any], frames: Sequence[NewFrame]) -> None:
    """Insert frame rows (existing (video_id, frame_index) pairs are left alone)."""
    with connection.cursor() as cursor:
        cursor.executemany(
            db.queries()["insert_frame"], [dataclasses.asdict(frame) for frame in frames]
        )


def image_uri(connection: psycopg.Connection[Any], frame_id: int) -> str | None:
    """Frame `frame_id`'s image URI, or None when there is no such frame."""
    row = connection.execute(db.queries()["frame_image_uri"], {"frame_id": frame_id}).fetchone()
    return None if row is None else str(row["image_uri"])


def project_exists(connection: psycopg.Connection[Any], project_id: str) -> bool:
    """Whether any frame belongs to `project_id`."""
    row = connection.execute(
        db.queries()["project_has_frames"], {"project_id": project_id}
    ).fetchone()
    return row is not None and bool(row["found"])


def count(connection: psycopg.Connection[Any], *, exact_rows: int | None = None) -> counting.Count:
    """All frames: counted where the planner puts them at or below `exact_rows`, else the
    planner's estimate (no scan of a table that only grows)."""
    exact_rows = counting.EXACT_ROWS if exact_rows is None else exact_rows
    estimate = counting.planned_rows(connection, "frames_rows_estimate")
    if estimate > exact_rows:
        return counting.Count(estimate, estimated=True)
    row = connection.execute(db.queries()["frames_count"]).fetchone()
    assert row is not None
    return counting.Count(int(row["frames"]))
