"""`search --by video` against a real database: moments of near-duplicate frames, videos
ranked and counted by --limit, the filters, and how many candidates it takes."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import psycopg
import pytest

from argus_embedder.commands import moments, nearest
from argus_embedder.gateways import frames, index
from tests.integration.test_index import write_vectors

MODEL = "test/moments"
DIMENSION = 64
MOMENT_KEYS = ["start_ms", "end_ms", "frame_id", "frame_index", "timestamp_ms", "image_uri"]


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def add_video(
    conn: psycopg.Connection[Any],
    model: index.ModelInfo,
    video: str,
    vectors: np.ndarray,
    project: str | None = None,
) -> list[int]:
    """A video at 1 frame/s (timestamps 0, 1000, …) with the given frame vectors."""
    frames.insert(
        conn,
        [
            frames.NewFrame(video, i, f"s3://b/{video}/{i}", project, timestamp_ms=1000 * i)
            for i in range(len(vectors))
        ],
    )
    ids = [
        row["id"]
        for row in conn.execute(
            "SELECT id FROM argus.frames WHERE video_id = %s ORDER BY frame_index", (video,)
        )
    ]
    write_vectors(conn, model, ids, vectors)
    return ids


def scenes(rng: np.random.Generator, centres: np.ndarray, frames_each: int) -> np.ndarray:
    """`frames_each` near-identical frames per scene centre, scene after scene."""
    repeated = np.repeat(centres, frames_each, axis=0)
    return unit(repeated + 0.01 * rng.normal(size=repeated.shape))


def as_json(found: moments.VideoSearch) -> list[dict[str, Any]]:
    return [dataclasses.asdict(video) for video in found.videos]


def test_three_scenes_make_three_moments_with_their_time_ranges(
    conn: psycopg.Connection[Any],
) -> None:
    model = index.register(conn, MODEL, DIMENSION, "hnsw", segment_rows=8)
    rng = np.random.default_rng(0)
    vectors = scenes(rng, unit(rng.normal(size=(3, DIMENSION))), 5)
    ids = add_video(conn, model, "clip", vectors, project="p1")
    assert index.build_sealed(conn, MODEL)  # part through the ANN index, part exact
    query = vectors[7]  # a frame of the middle scene, exactly

    found = moments.search_videos(conn, MODEL, query, limit=1)
    [video] = as_json(found)
    assert list(video) == ["video_id", "project_id", "score", "moments"]
    assert (video["video_id"], video["project_id"]) == ("clip", "p1")
    assert video["score"] == pytest.approx(1.0, abs=2e-3)
    assert [list(moment) for moment in video["moments"]] == [[*MOMENT_KEYS, "score"]] * 3
    ranges = [(moment["start_ms"], moment["end_ms"]) for moment in video["moments"]]
    assert ranges[0] == (5000, 9000)
    assert sorted(ranges[1:]) == [(0, 4000), (10000, 14000)]
    first = video["moments"][0]
    assert (first["frame_id"], first["frame_index"], first["timestamp_ms"]) == (ids[7], 7, 7000)
    assert first["image_uri"] == "s3://b/clip/7"
    # each moment's frame is its scene's best hit, with that hit's score
    hits = nearest.frames(conn, MODEL, query, limit=15)
    for moment in video["moments"]:
        scene = [hit for hit in hits if moment["start_ms"] <= hit.timestamp_ms <= moment["end_ms"]]
        best = max(scene, key=lambda hit: hit.score)
        assert (moment["frame_id"], moment["score"]) == (best.frame_id, best.score)
    assert [m["score"] for m in video["moments"]] == sorted(
        (m["score"] for m in video["moments"]), reverse=True
    )
    assert (found.candidates, found.searches) == (15, 1)


def test_limit_counts_videos_best_first_each_once(conn: psycopg.Connection[Any]) -> None:
    model = index.register(conn, MODEL, DIMENSION, "hnsw", segment_rows=50)
    rng = np.random.default_rng(1)
    query = unit(rng.normal(size=DIMENSION))
    # video k's one scene leans on the query less and less: k = 0 is the best video
    for k in range(8):
        away = rng.normal(size=DIMENSION)
        away = unit(away - (away @ query) * query)  # orthogonal to the query
        centre = unit(query * (1.0 - 0.1 * k) + 0.5 * away)
        add_video(conn, model, f"video-{k}", scenes(rng, centre[None, :], 40))
    index.build_sealed(conn, MODEL)

    found = moments.search_videos(conn, MODEL, query, limit=3)
    assert [video.video_id for video in found.videos] == ["video-0", "video-1", "video-2"]
    assert all(len(video.moments) == 1 for video in found.videos)
    assert all(
        (video.moments[0].start_ms, video.moments[0].end_ms) == (0, 39_000)
        for video in found.videos
    )
    # 40 near-identical frames per video: the first 100 candidates span 3 videos
    assert (found.candidates, found.searches) == (100, 1)
    found = moments.search_videos(conn, MODEL, query, limit=5)
    assert [video.video_id for video in found.videos] == [f"video-{k}" for k in range(5)]
    assert (found.candidates, found.searches) == (200, 2)  # 100 spanned 3 videos: doubled
    found = moments.search_videos(conn, MODEL, query, limit=10)
    assert len(found.videos) == 8  # all there is
    assert found.candidates == 320 and found.searches == 2  # 200, then 400 ran dry


def test_project_and_video_filters(conn: psycopg.Connection[Any]) -> None:
    model = index.register(conn, MODEL, DIMENSION, "hnsw")
    rng = np.random.default_rng(2)
    centres = unit(rng.normal(size=(2, DIMENSION)))
    for k in range(4):
        add_video(conn, model, f"v{k}", scenes(rng, centres, 3), project=f"p{k % 2}")
    query = centres[0]

    found = moments.search_videos(conn, MODEL, query, limit=10, project_id="p1")
    assert sorted(video.video_id for video in found.videos) == ["v1", "v3"]
    assert {video.project_id for video in found.videos} == {"p1"}
    found = moments.search_videos(conn, MODEL, query, limit=10, video_id="v2")
    [video] = found.videos
    assert (video.video_id, video.project_id) == ("v2", "p0")
    assert [(m.start_ms, m.end_ms) for m in video.moments] == [(0, 2000), (3000, 5000)]
    assert not moments.search_videos(
        conn, MODEL, query, limit=10, video_id="v2", project_id="p1"
    ).videos


def test_candidate_counts_for_limit_1_5_10(conn: psycopg.Connection[Any]) -> None:
    """60 videos of 30 frames (3 scenes of 10 at 1 frame/s) from shared topics: how many
    candidate frames fill --limit videos, and the bound holds."""
    model = index.register(conn, MODEL, DIMENSION, "hnsw", segment_rows=700)
    rng = np.random.default_rng(3)
    topics = unit(rng.normal(size=(12, DIMENSION)))
    for k in range(60):
        centres = unit(topics[rng.integers(0, 12, 3)] + 0.4 * rng.normal(size=(3, DIMENSION)))
        add_video(conn, model, f"video-{k:02d}", scenes(rng, centres, 10))
    assert len(index.build_sealed(conn, MODEL)) == 2  # 1400 indexed, 400 exact
    query = topics[0]
    counts = {}
    for limit in (1, 5, 10):
        found = moments.search_videos(conn, MODEL, query, limit=limit)
        assert len(found.videos) == limit
        assert len({video.video_id for video in found.videos}) == limit
        assert found.candidates <= moments.candidate_bound(limit)
        assert found.frames <= (2 * moments.REACH + 1) * found.candidates
        counts[limit] = (found.candidates, found.searches, found.frames)
    print(f"moments (candidates, searches, frames grouped) per --limit: {counts}")
