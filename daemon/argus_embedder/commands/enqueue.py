"""`argus-embedder enqueue`: insert a job for a video that has frames."""

from __future__ import annotations

import argparse

from argus_embedder import errors
from argus_embedder.commands import common
from argus_embedder.gateways import queue
from argus_embedder.settings import Settings


def main(args: argparse.Namespace, config: Settings) -> int:
    with common.connect(config) as connection:
        if not queue.video_exists(connection, args.video_id):
            raise errors.UserInputError(
                f"video {common.short(args.video_id)} has no frames; insert its frames first "
                "(or use `argus-embedder ingest`)"
            )
        job_id = queue.enqueue(
            connection, args.video_id, model=args.job_model, priority=args.priority
        )
    if job_id is None:
        print(f"video {common.short(args.video_id)} already has a queued job; nothing added")
    else:
        print(f"enqueued job {job_id} for video {common.short(args.video_id)}")
    return 0
