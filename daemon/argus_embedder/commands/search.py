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

from argus_embedder import db, errors
from argus_embedder.commands import common, moments, nearest
from argus_embedder.gateways import index
from argus_embedder.settings import Settings

BY = ("frame", "video")
MAX_LIMIT = 1000
MAX_TEXT = 10_000


def check_request(text: str | None, limit: int) -> None:
    """The bounds `search` and `serve` both enforce before any work, as UserInputErrors."""
    if not 1 <= limit <= MAX_LIMIT:
        raise errors.UserInputError(f"limit must be between 1 and {MAX_LIMIT}")
    if text is not None and len(text) > MAX_TEXT:
        raise errors.UserInputError(f"search text is longer than {MAX_TEXT} characters")


def found(
    connection: psycopg.Connection[Any],
    model: str,
    query: npt.NDArray[np.float32],
    *,
    by: str,
    limit: int,
    video_id: str | None = None,
    project_id: str | None = None,
) -> list[Any]:
    """Frame hits (`by="frame"`) or videos with moments (`by="video"`), best first."""
    if by == "video":
        videos = moments.search_videos(
            connection, model, query, limit=limit, video_id=video_id, project_id=project_id
        ).videos
        return list(videos)
    if by != "frame":
        raise errors.UserInputError(f"by must be one of {', '.join(BY)}")
    return nearest.frames(
        connection, model, query, limit=limit, video_id=video_id, project_id=project_id
    )


def as_json(results: list[Any]) -> list[dict[str, Any]]:
    """What `search --json` prints and `serve`'s /search returns: one builder, so the
    two can never drift apart."""
    return [dataclasses.asdict(result) for result in results]


def main(args: argparse.Namespace, config: Settings) -> int:
    """`argus-embedder search "text" | --image PATH [--limit K] [--video V] [--project P]
    [--by frame|video] [--json]`."""
    if (args.text is None) == (args.image is None):
        raise errors.UserInputError("give either a search text or --image PATH")
    if not 1 <= args.limit <= MAX_LIMIT:
        raise errors.UserInputError(f"--limit must be between 1 and {MAX_LIMIT}")
    check_request(args.text, args.limit)
    with common.connect_read(config) as connection:
        config = common.resolve_model(config, connection)
        check_searchable(connection, config.model)
    query = _query_vector(args, config)
    with common.connect_read(config) as connection:
        results = found(
            connection,
            config.model,
            query,
            by=args.by,
            limit=args.limit,
            video_id=args.video,
            project_id=args.project,
        )
    if args.json:
        print(json.dumps(as_json(results), indent=2))
    elif args.by == "video":
        moments.print_videos(results)
    else:
        _print_hits(results)
    return 0


def _print_hits(hits: list[nearest.Hit]) -> None:
    if not hits:
        print("no frames found")
    for rank, hit in enumerate(hits, 1):
        print(
            f"{rank:>3}. {hit.score:.4f}  video {hit.video_id} frame {hit.frame_index}  "
            f"{hit.image_uri}"
        )


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


def check_searchable(connection: psycopg.Connection[Any], model: str) -> None:
    """Before loading a model for the query: is it registered here at all?"""
    if index.info(connection, model) is None:
        known = [row["model"] for row in connection.execute(db.queries()["models"])]
        raise errors.UserInputError(
            f"model {model!r} has no embeddings in this database; registered: "
            + (", ".join(known) if known else "none (run `argus-embedder migrate --model M`)")
        )
