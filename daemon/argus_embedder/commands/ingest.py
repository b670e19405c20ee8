"""`argus-embedder ingest`: register local images as frames of a video, then enqueue it."""

from __future__ import annotations

import argparse

from argus_embedder.commands import common, progress
from argus_embedder.gateways import frames, queue
from argus_embedder.settings import Settings

_CHUNK = 500  # frames per insert transaction


def main(args: argparse.Namespace, config: Settings) -> int:
    files = frames.image_files(args.paths)
    with common.connect(config) as connection:
        with progress.Progress("ingest", len(files)) as bar:
            for start in range(0, len(files), _CHUNK):
                rows = [
                    frames.NewFrame(
                        video_id=args.video_id,
                        frame_index=start + offset,
                        image_uri=path.resolve().as_uri(),
                        project_id=args.project,
                    )
                    for offset, path in enumerate(files[start : start + _CHUNK])
                ]
                with connection.transaction():
                    frames.insert(connection, rows)
                bar.advance(len(rows))
        job_id = queue.enqueue(connection, args.video_id, model=None, priority=0)
    note = f"job {job_id}" if job_id is not None else "an already queued job"
    print(
        f"ingested {len(files)} frame(s) of video {common.short(args.video_id)}; "
        f"{note} will embed them"
    )
    return 0
