"""Failed frames are logged with frame id, video, model and reason, rate-limited per job."""

from __future__ import annotations

import logging
import uuid

import pytest

from argus_embedder.gateways.queue import Job
from argus_embedder.pipeline.failed_frames import PER_JOB, FailedFrames


def job(job_id: int, video_id: str = "cam-1") -> Job:
    return Job(job_id, video_id, "m", 1, 5, uuid.uuid4(), 0.0)


def test_a_video_of_10000_broken_frames_logs_a_bounded_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="argus_embedder.pipeline.failed_frames")
    failed = FailedFrames()
    broken, other = job(1), job(2, "cam-2")
    for frame_id in range(10_000):
        failed.record(broken, frame_id + 1, "cannot identify image file")
    failed.record(other, 99_999, "missing object s3://b/k.jpg")
    failed.ended(broken)
    failed.ended(other)
    lines = [record.getMessage() for record in caplog.records]

    assert len(lines) == PER_JOB + 1 + 1  # broken's first ten and its summary; other's one
    assert lines[0] == (
        "frame 1 of video 'cam-1' (job 1, model m) failed: cannot identify image file"
    )
    assert "frame 99999 of video 'cam-2' (job 2, model m) failed: missing object" in lines[-2]
    assert lines[-1].startswith("job 1 (video 'cam-1', model m): 10000 frames failed, 9990 of")
    # Each frame once: a claim ended is forgotten, and ending twice says nothing more.
    failed.ended(broken)
    assert len(caplog.records) == PER_JOB + 2


def test_a_hostile_video_id_is_cut_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="argus_embedder.pipeline.failed_frames")
    FailedFrames().record(job(3, "v" * 10_000), 7, "bad")
    [line] = [record.getMessage() for record in caplog.records]
    assert len(line) < 400 and "(10000 characters)" in line
