"""`argus-embedder backfill`: a job for every video with frames lacking a model's rows.

The walk is keyset-paginated on video_id (a loose index scan, BATCH_VIDEOS at
a time), each batch its own short statements, so it is safe while daemons run
and can be stopped and run again at any point. It is idempotent: a video
already covered by a queued or running job for the model gets nothing, so a
second run adds no job. Unlike the reconciler it re-arms videos whose last job
failed: running it is an operator asking for exactly that.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import psycopg

from argus_embedder import db, errors
from argus_embedder.commands import common, progress
from argus_embedder.gateways import queue
from argus_embedder.settings import Settings

BATCH_VIDEOS = 500
DEFAULT_PRIORITY = -10  # below fresh uploads (priority 0): a backfill never starves them


@dataclasses.dataclass(frozen=True)
class BackfillResult:
    videos: int  # videos looked at
    lacking: int  # of those, with frames lacking the model's rows
    enqueued: int  # jobs added (the rest were already covered)


def backfill(
    connection: psycopg.Connection[Any],
    model: str,
    *,
    configured_model: str,
    project: str | None = None,
    priority: int = DEFAULT_PRIORITY,
    batch: int = BATCH_VIDEOS,
) -> BackfillResult:
    """Enqueue a job naming `model` for every video (of `project`) lacking its rows."""
    q = db.queries()
    if connection.execute(q["model_info"], {"model": model}).fetchone() is None:
        raise errors.UserInputError(
            f"model {model!r} is not registered in this database: run "
            f"`argus-embedder migrate --model {model}` first"
        )
    scope = {"project": project}
    count_query = "backfill_count_videos" if project is None else "backfill_count_project_videos"
    batch_query = "backfill_videos" if project is None else "backfill_project_videos"
    counted = connection.execute(q[count_query], scope).fetchone()
    total = 0 if counted is None else int(counted["videos"])
    videos = lacking = enqueued = 0
    after = ""  # an empty video_id would sort first and be skipped: the reconciler has it
    with progress.Progress("backfill", total) as bar:
        while True:
            rows = connection.execute(
                q[batch_query], {**scope, "after": after, "limit": batch, "model": model}
            ).fetchall()
            if not rows:
                break
            candidates = [row["video_id"] for row in rows if row["lacking"]]
            added = queue.enqueue_missing(
                connection,
                candidates,
                model=model,
                configured_model=configured_model,
                priority=priority,
                respect_failures=False,
            )
            videos += len(rows)
            lacking += len(candidates)
            enqueued += len(added)
            after = rows[-1]["video_id"]
            bar.advance(len(rows))
    return BackfillResult(videos=videos, lacking=lacking, enqueued=enqueued)


def main(args: argparse.Namespace, config: Settings) -> int:
    """`argus-embedder backfill --model M [--project P] [--priority N]`."""
    if args.model is None:
        raise errors.UserInputError("backfill needs --model M, the model to fill in")
    priority = DEFAULT_PRIORITY if args.priority is None else args.priority
    with common.connect(config) as connection:
        result = backfill(
            connection,
            config.model,
            configured_model=common.configured_model(config, connection),
            project=args.project,
            priority=priority,
        )
    print(
        f"backfill {config.model}: {result.videos} video(s) checked, {result.lacking} lacking "
        f"rows, {result.enqueued} job(s) enqueued at priority {priority}"
        + (" (the others already had a job)" if result.lacking > result.enqueued else "")
    )
    return 0
