"""The frames nearest a query vector: the one index read that `search --by frame`
and `--by video` (moments) both build on, so neither command imports the other."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.rows import class_row

from argus_embedder import db, errors


@dataclasses.dataclass(frozen=True)
class Hit:
    frame_id: int
    video_id: str
    frame_index: int
    timestamp_ms: int | None
    image_uri: str
    score: float


def frames(
    connection: psycopg.Connection[Any],
    model: str,
    query: npt.NDArray[np.float32],
    *,
    limit: int,
    video_id: str | None = None,
    project_id: str | None = None,
) -> list[Hit]:
    """The `limit` frames closest (cosine) to the unit vector `query`, best first."""
    parameters = {
        "model": model,
        "query": query,
        "limit": limit,
        "video_id": video_id,
        "project_id": project_id,
    }
    try:
        with connection.cursor(row_factory=class_row(Hit)) as cursor:
            return cursor.execute(db.queries()["search_frames"], parameters).fetchall()
    except psycopg.errors.NoDataFound as error:
        raise errors.UserInputError(
            f"model {model!r} has no embeddings in this database "
            "(run `argus-embedder migrate --model MODEL` and embed some frames)"
        ) from error
