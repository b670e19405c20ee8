"""Failed frames, logged (DESIGN §6): each with its frame id, video, model and reason,
at most a few per job, then one summary when the job ends.

A frame that can never succeed gets an error row and counts in frames_failed, but the
operator looking for it needs its id in the log. A video whose 10,000 frames are all
broken must not write 10,000 lines, so a claim logs its first `per_job` failures one by
one and, when it ends, one line counting the rest.
"""

from __future__ import annotations

import logging
import threading

from argus_embedder.gateways.queue import Claim, Job

log = logging.getLogger(__name__)

PER_JOB = 10  # failed frames logged one by one per claim; the rest are counted
_ID_CHARACTERS = 200  # of a video id in a log line: the frame stage's ids are any text


class FailedFrames:
    """Counts each claim's failed frames and logs them, rate-limited. Thread-safe: the
    writer's thread records, whichever thread ends the claim summarises."""

    def __init__(self, per_job: int = PER_JOB) -> None:
        self._per_job = per_job
        self._lock = threading.Lock()
        self._counts: dict[Claim, int] = {}

    def record(self, job: Job, frame_id: int, reason: str) -> None:
        """One failed frame of `job`, committed as its error row."""
        with self._lock:
            seen = self._counts.get(job.claim, 0) + 1
            self._counts[job.claim] = seen
        if seen <= self._per_job:
            log.warning(
                "frame %s of video %s (job %s, model %s) failed: %s%s",
                frame_id,
                _short(job.video_id),
                job.id,
                job.model,
                reason,
                " (further failed frames of this job are counted, not logged)"
                if seen == self._per_job
                else "",
            )

    def ended(self, job: Job) -> None:
        """The claim ended: say how many of its failed frames were not logged."""
        with self._lock:
            seen = self._counts.pop(job.claim, 0)
        if seen > self._per_job:
            log.warning(
                "job %s (video %s, model %s): %d frames failed, %d of them not logged "
                "one by one (their error rows in argus.frame_embeddings say why)",
                job.id,
                _short(job.video_id),
                job.model,
                seen,
                seen - self._per_job,
            )


def _short(video_id: str) -> str:
    if len(video_id) <= _ID_CHARACTERS:
        return repr(video_id)
    return f"{video_id[:_ID_CHARACTERS]!r}… ({len(video_id)} characters)"
