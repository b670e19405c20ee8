"""`search --by video`: frame hits grouped per video into moments (DESIGN §3 "Moments").

Candidates come through the same index path as `search --by frame` (ANN scans of
sealed segments plus the exact tail): the best `first_fetch(limit)` frames, doubled
until they span `limit` distinct videos, the search runs dry, or
`candidate_bound(limit)` frames. Because hits arrive best first, the first `limit`
distinct videos among them are the `limit` best videos: no frame outside the
candidates can beat them (up to the index's recall). Then one more round trip
(`moment_frames`) fetches the candidates and the frames within REACH frame_index
steps of them, each with its cosine to the previous frame, and the pure `group`
below does the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.rows import class_row

from argus_embedder import db
from argus_embedder.commands import nearest

NEAR_DUPLICATE = 0.95  # cosine with the neighbouring frame: same moment
MOMENTS_PER_VIDEO = 3  # a video's best moments reported; the rest are dropped
# Frames fetched on either side of each candidate: a run of near-duplicates can
# bridge up to 2 * REACH consecutive frames that were not candidates (all of a
# scene's frames score alike, so which of them the index returns is near chance),
# and a moment reaches up to REACH frames past its outermost candidates.
REACH = 5
MIN_FETCH = 100  # hnsw.ef_search never goes below 100, so fewer saves nothing
FIRST_FETCH_PER_VIDEO = 20
CANDIDATES_PER_VIDEO = 50
MAX_CANDIDATES = 5000


@dataclasses.dataclass(frozen=True)
class MomentFrame:
    """A row of `moment_frames`: a candidate or a neighbour of one."""

    frame_id: int
    video_id: str
    project_id: str | None
    frame_index: int
    timestamp_ms: int | None
    image_uri: str
    # cosine with the frame at frame_index - 1; None when it or its vector is missing
    previous_similarity: float | None


@dataclasses.dataclass(frozen=True)
class Moment:
    start_ms: int | None
    end_ms: int | None
    frame_id: int
    frame_index: int
    timestamp_ms: int | None
    image_uri: str
    score: float


@dataclasses.dataclass(frozen=True)
class VideoHit:
    video_id: str
    project_id: str | None
    score: float
    moments: list[Moment]


@dataclasses.dataclass(frozen=True)
class VideoSearch:
    videos: list[VideoHit]
    candidates: int  # frames the last index search returned
    searches: int  # index searches it took (the fetch size doubles each time)
    frames: int  # rows of moment_frames: the candidates and the frames around them


def candidate_bound(limit: int) -> int:
    """The most candidate frames fetched for `limit` videos."""
    return min(MAX_CANDIDATES, max(MIN_FETCH, CANDIDATES_PER_VIDEO * limit))


def first_fetch(limit: int) -> int:
    """How many frames the first index search asks for."""
    return min(candidate_bound(limit), max(MIN_FETCH, FIRST_FETCH_PER_VIDEO * limit))


def runs(
    frames: Sequence[MomentFrame], threshold: float = NEAR_DUPLICATE
) -> list[list[MomentFrame]]:
    """Maximal runs of consecutive frames (same video, frame_index + 1) whose vectors
    are near-duplicates of their predecessor's."""
    ordered = sorted(frames, key=lambda frame: (frame.video_id, frame.frame_index))
    found: list[list[MomentFrame]] = []
    for frame in ordered:
        if found:
            last = found[-1][-1]
            if (
                last.video_id == frame.video_id
                and last.frame_index + 1 == frame.frame_index
                and frame.previous_similarity is not None
                and frame.previous_similarity >= threshold
            ):
                found[-1].append(frame)
                continue
        found.append([frame])
    return found


def group(
    hits: Sequence[nearest.Hit],
    frames: Sequence[MomentFrame],
    *,
    limit: int,
    per_video: int = MOMENTS_PER_VIDEO,
    threshold: float = NEAR_DUPLICATE,
) -> list[VideoHit]:
    """The `limit` best videos, each with its `per_video` best moments, best first.

    A moment is a run (see `runs`) holding at least one hit; its best frame is its
    best-scoring hit, its range runs from the first to the last frame of the run
    (`timestamp_ms`, None where that frame has none). The run may take in a
    neighbour that was not a hit, since `frames` holds the hits' neighbours too.
    """
    scores = {hit.frame_id: hit.score for hit in hits}
    per_video_moments: dict[str, list[Moment]] = {}
    projects: dict[str, str | None] = {}
    for run in runs(frames, threshold):
        scored = [frame for frame in run if frame.frame_id in scores]
        if not scored:
            continue
        best = min(scored, key=lambda frame: (-scores[frame.frame_id], frame.frame_index))
        per_video_moments.setdefault(best.video_id, []).append(
            Moment(
                start_ms=run[0].timestamp_ms,
                end_ms=run[-1].timestamp_ms,
                frame_id=best.frame_id,
                frame_index=best.frame_index,
                timestamp_ms=best.timestamp_ms,
                image_uri=best.image_uri,
                score=scores[best.frame_id],
            )
        )
        projects[best.video_id] = best.project_id
    videos = []
    for video_id, moments in per_video_moments.items():
        moments.sort(key=lambda moment: (-moment.score, moment.frame_index))
        videos.append(VideoHit(video_id, projects[video_id], moments[0].score, moments[:per_video]))
    videos.sort(key=lambda video: (-video.score, video.video_id))
    return videos[:limit]


def search_videos(
    connection: psycopg.Connection[Any],
    model: str,
    query: npt.NDArray[np.float32],
    *,
    limit: int,
    video_id: str | None = None,
    project_id: str | None = None,
) -> VideoSearch:
    """The `limit` videos closest (cosine) to the unit vector `query`, with moments."""
    bound = candidate_bound(limit)
    wanted = first_fetch(limit)
    searches = 0
    while True:
        searches += 1
        hits = nearest.frames(
            connection, model, query, limit=wanted, video_id=video_id, project_id=project_id
        )
        enough = len({hit.video_id for hit in hits}) >= limit
        if enough or len(hits) < wanted or wanted >= bound:
            break
        wanted = min(bound, 2 * wanted)
    if not hits:
        return VideoSearch([], 0, searches, 0)
    with connection.cursor(row_factory=class_row(MomentFrame)) as cursor:
        frames = cursor.execute(
            db.queries()["moment_frames"],
            {"model": model, "frame_ids": [hit.frame_id for hit in hits], "reach": REACH},
        ).fetchall()
    return VideoSearch(group(hits, frames, limit=limit), len(hits), searches, len(frames))


def clock(milliseconds: int | None) -> str:
    """mm:ss (minutes unbounded), or --:-- without a timestamp."""
    if milliseconds is None:
        return "--:--"
    seconds = milliseconds // 1000
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def print_videos(videos: Sequence[VideoHit]) -> None:
    """One line per video, an indented line per moment."""
    if not videos:
        print("no videos found")
    for rank, video in enumerate(videos, 1):
        project = f" (project {video.project_id})" if video.project_id is not None else ""
        print(f"{rank:>3}. {video.score:.4f}  video {video.video_id}{project}")
        for moment in video.moments:
            print(
                f"       {clock(moment.start_ms)}\N{EN DASH}{clock(moment.end_ms)}  "
                f"frame {moment.frame_index}  {moment.score:.4f}  {moment.image_uri}"
            )
