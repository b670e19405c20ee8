"""Text-to-frame (and image-to-frame) search over one model's vectors."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.rows import class_row

from argus_embedder import db, errors
from argus_embedder.commands import common
from argus_embedder.gateways import index
from argus_embedder.settings import Settings


@dataclasses.dataclass(frozen=True)
class Hit:
    frame_id: int
    video_id: str
    frame_index: int
    timestamp_ms: int | None
    image_uri: str
    score: float


def search(
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


def main(args: argparse.Namespace, config: Settings) -> int:
    """`argus-embedder search "text" | --image PATH [--limit K] [--video V] [--project P]
    [--by frame|video] [--json]`."""
    # moments builds on search(): imported here, not at the top, to keep the import one-way
    from argus_embedder.commands import moments

    if (args.text is None) == (args.image is None):
        raise errors.UserInputError("give either a search text or --image PATH")
    if not 1 <= args.limit <= 1000:
        raise errors.UserInputError("--limit must be between 1 and 1000")
    if args.text is not None and len(args.text) > 10_000:
        raise errors.UserInputError("search text is longer than 10000 characters")
    with common.connect(config) as connection:
        _check_searchable(connection, config.model)
    query = _query_vector(args, config)
    filters = {"limit": args.limit, "video_id": args.video, "project_id": args.project}
    if args.by == "video":
        with common.connect(config) as connection:
            found = moments.search_videos(connection, config.model, query, **filters)
        if args.json:
            print(json.dumps([dataclasses.asdict(video) for video in found.videos], indent=2))
        else:
            moments.print_videos(found.videos)
        return 0
    with common.connect(config) as connection:
        hits = search(connection, config.model, query, **filters)
    if args.json:
        print(json.dumps([hit.__dict__ for hit in hits], indent=2))
        return 0
    if not hits:
        print("no frames found")
    for rank, hit in enumerate(hits, 1):
        print(
            f"{rank:>3}. {hit.score:.4f}  video {hit.video_id} frame {hit.frame_index}  "
            f"{hit.image_uri}"
        )
    return 0


def _query_vector(args: argparse.Namespace, config: Settings) -> npt.NDArray[np.float32]:
    """The search text's vector, or --image's, with the configured model."""
    from argus_embedder.pipeline import embedder

    vector: npt.NDArray[np.float32]
    if args.image is None:
        encoder = embedder.load_text_encoder(config.model, config.device)
        vector = encoder.embed_texts([args.text])[0]
        return vector
    image_embedder = embedder.load_embedder(config.model, config.device, config.batch_size)
    try:
        data = Path(args.image).read_bytes()
    except OSError as error:
        raise errors.UserInputError(f"{args.image}: {error.strerror}") from error
    try:
        vector = image_embedder.embed([image_embedder.prepare(data)])[0]
    except errors.FrameError as error:
        raise errors.UserInputError(f"{args.image}: {error}") from error
    return vector


def _check_searchable(connection: psycopg.Connection[Any], model: str) -> None:
    """Before loading a model for the query: is it registered here at all?"""
    if index.info(connection, model) is None:
        known = [row["model"] for row in connection.execute(db.queries()["models"])]
        raise errors.UserInputError(
            f"model {model!r} has no embeddings in this database; registered: "
            + (", ".join(known) if known else "none (run `argus-embedder migrate --model M`)")
        )
