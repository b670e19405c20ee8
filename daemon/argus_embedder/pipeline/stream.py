"""The stream: the frames of every held job, in claim order, topped up by claiming more jobs.

When fewer than two batches of frames are buffered the stream claims more jobs,
so small jobs share batches and the model never waits at a job boundary. The
frames a few batches ahead are handed to the preparer (fetch and decode) early.
Claims live in the ledger; a frame whose claim has ended is dropped when its
turn comes, so a lost, cancelled or failed job costs nothing more.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
from typing import Any

import psycopg_pool

from argus_embedder import metrics
from argus_embedder.gateways.queue import Claim, Frame, Job, Queue
from argus_embedder.pipeline import preparing
from argus_embedder.pipeline.endings import Endings
from argus_embedder.pipeline.ledger import Ledger, Outcome

log = logging.getLogger(__name__)

_MAX_CLAIM = 16  # jobs per claim statement when topping up with small jobs


@dataclasses.dataclass(eq=False)
class Item:
    """One frame in the stream, with its fetch+decode future once submitted."""

    job: Job
    frame: Frame
    future: concurrent.futures.Future[preparing.Prepared] | None = None
    last: bool = False  # set when taken: the write of this frame completes its claim

    @property
    def claim(self) -> Claim:
        return self.job.claim

    def discard(self) -> None:
        if self.future is not None:
            self.future.cancel()


class Stream:
    """Frames waiting for the model, across jobs. Used by the loop thread only."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool[Any],
        queue: Queue,
        ledger: Ledger,
        endings: Endings,
        preparer: preparing.Preparer,
        *,
        frames_per_job: float,
    ) -> None:
        self._pool = pool
        self._queue = queue
        self._ledger = ledger
        self._endings = endings
        self._preparer = preparer
        self._items: collections.deque[Item] = collections.deque()
        self._frames_per_job = max(1.0, frames_per_job)  # a running average

    def __len__(self) -> int:
        return len(self._items)

    def claim(self, limit: int = 1) -> int:
        """Claim up to `limit` jobs and append their missing frames; returns how many
        jobs were claimed (0: nothing claimable)."""
        with self._pool.connection() as connection:
            jobs = self._queue.claim(connection, limit=limit)
            for job in jobs:
                for earlier in self._ledger.earlier_claims(job):
                    # Cancelled and retried while its frames still streamed: the same id
                    # came back with a new token, and the earlier claim's writes are void.
                    self._endings.ended(earlier, Outcome.LOST, "claimed again")
                self._ledger.claimed(job)
            listed = self._queue.missing_frames(connection, jobs) if jobs else {}
            for job in jobs:
                metrics.JOBS_CLAIMED.inc()
                metrics.JOB_QUEUE_WAIT.observe(job.queue_wait_seconds)
                frames = listed.get(job.id)
                if frames is None:
                    self._endings.ended(job.claim, Outcome.LOST, "gone before its listing")
                    continue
                self._ledger.listed(job.claim, len(frames))
                self._frames_per_job = 0.8 * self._frames_per_job + 0.2 * len(frames)
                log.info(
                    "job %s: claimed video %r, %d frame(s) to embed (attempt %d)",
                    job.id,
                    job.video_id,
                    len(frames),
                    job.attempts,
                )
                if frames:
                    self._items.extend(Item(job, frame) for frame in frames)
                    continue
                # Every frame already has its row (a resumed job): done.
                done = self._queue.complete(connection, job) is not None
                self._endings.ended(job.claim, Outcome.SUCCEEDED if done else Outcome.LOST)
        return len(jobs)

    def top_up(self, target: int) -> bool:
        """Claim jobs until `target` frames are buffered; False once none is claimable."""
        while len(self._items) < target:
            # As many jobs as the deficit needs at the recent frames per job, so a
            # stream of tiny jobs costs one claim per batch, not one per job.
            wanted = -(-(target - len(self._items)) // max(1, round(self._frames_per_job)))
            if not self.claim(limit=min(_MAX_CLAIM, wanted)):
                return False
        return True

    def prepare_ahead(self, ahead: int) -> None:
        """Hand the next `ahead` frames to the preparer, if not yet."""
        waiting = [item for item in itertools.islice(self._items, ahead) if item.future is None]
        if not waiting:
            return
        futures = self._preparer.submit([item.frame.image_uri for item in waiting])
        for item, future in zip(waiting, futures, strict=True):
            item.future = future

    def take(self, size: int) -> list[Item]:
        """The next batch of up to `size` frames of live claims, each frame once."""
        batch: list[Item] = []
        taken: dict[tuple[int, str], int] = {}  # (frame id, model) -> its place in the batch
        while self._items and len(batch) < size:
            item = self._items.popleft()
            last = self._ledger.take(item.claim)
            if last is None:  # its claim ended: nothing waits for this frame
                item.discard()
                continue
            item.last = last
            key = (item.frame.id, item.job.model)
            if key in taken:
                # One frame twice in a write would void the whole COPY. Claims join the
                # stream in order, so the later item is the newer claim's.
                batch[taken[key]].discard()
                batch[taken[key]] = item
                continue
            taken[key] = len(batch)
            batch.append(item)
        return batch

    def clear(self) -> None:
        """Drop every frame left (the loop stops or starts over after an error)."""
        for item in self._items:
            item.discard()
        self._items.clear()
