"""Moments without a database: runs of near-duplicate neighbours, best frames, ranking."""

from __future__ import annotations

from argus_embedder.commands import moments, nearest


def frame(
    video: str,
    index: int,
    similarity: float | None,
    *,
    timestamp: int | None = -1,
    project: str | None = "p",
) -> moments.MomentFrame:
    return moments.MomentFrame(
        frame_id=ord(video) * 1000 + index,
        video_id=video,
        project_id=project,
        frame_index=index,
        timestamp_ms=index * 1000 if timestamp == -1 else timestamp,
        image_uri=f"s3://b/{video}/{index}",
        previous_similarity=similarity,
    )


def hit(row: moments.MomentFrame, score: float) -> nearest.Hit:
    return nearest.Hit(
        row.frame_id, row.video_id, row.frame_index, row.timestamp_ms, row.image_uri, score
    )


def test_near_duplicate_neighbours_collapse_into_one_moment_with_the_best_frame() -> None:
    # frames 0-2 one scene, 3 a cut (similarity 0.2), 4 a neighbour-only frame of 3,
    # 6 after a gap of one missing frame: a moment of its own
    rows = [
        frame("a", 0, None),
        frame("a", 1, 0.99),
        frame("a", 2, 0.97),
        frame("a", 3, 0.2),
        frame("a", 4, 0.96),
        frame("a", 6, 0.99),
    ]
    hits = [hit(rows[1], 0.9), hit(rows[0], 0.8), hit(rows[3], 0.7), hit(rows[5], 0.95)]
    [video] = moments.group(hits, rows, limit=5)
    assert video.video_id == "a" and video.project_id == "p" and video.score == 0.95
    assert [(m.start_ms, m.end_ms, m.frame_index, m.score) for m in video.moments] == [
        (6000, 6000, 6, 0.95),
        (0, 2000, 1, 0.9),  # frame 2 joins as a near-duplicate neighbour, though no hit
        (3000, 4000, 3, 0.7),
    ]


def test_videos_ranked_by_best_moment_and_cut_to_the_limit() -> None:
    rows = [frame(video, index, 0.99 if index else None) for video in "abc" for index in range(4)]
    scores = {"a": 0.5, "b": 0.9, "c": 0.7}
    hits = [hit(row, scores[row.video_id] - row.frame_index / 100) for row in rows]
    videos = moments.group(hits, rows, limit=2)
    assert [video.video_id for video in videos] == ["b", "c"]
    assert [len(video.moments) for video in videos] == [1, 1]
    assert videos[0].moments[0].frame_index == 0
    assert (videos[0].moments[0].start_ms, videos[0].moments[0].end_ms) == (0, 3000)


def test_at_most_three_moments_per_video_and_missing_timestamps_stay_null() -> None:
    rows = [frame("a", index, 0.1, timestamp=None, project=None) for index in range(5)]
    hits = [hit(row, 0.5 + row.frame_index / 10) for row in rows]
    [video] = moments.group(hits, rows, limit=1)
    assert video.project_id is None
    assert [m.frame_index for m in video.moments] == [4, 3, 2]
    assert all(m.start_ms is None and m.end_ms is None for m in video.moments)


def test_frames_without_a_hit_make_no_moment() -> None:
    rows = [frame("a", 0, None), frame("a", 1, 0.3), frame("b", 0, None)]
    videos = moments.group([hit(rows[0], 0.4)], rows, limit=10)
    assert [(v.video_id, len(v.moments)) for v in videos] == [("a", 1)]


def test_candidate_bounds() -> None:
    assert [moments.first_fetch(k) for k in (1, 5, 10, 1000)] == [100, 100, 200, 5000]
    assert [moments.candidate_bound(k) for k in (1, 5, 10, 1000)] == [100, 250, 500, 5000]


def test_clock() -> None:
    assert [moments.clock(ms) for ms in (None, 0, 61_999, 3_600_000)] == [
        "--:--",
        "00:00",
        "01:01",
        "60:00",
    ]
