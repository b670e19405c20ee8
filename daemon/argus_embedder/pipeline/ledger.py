"""The job ledger: every job this daemon holds, its phase and how it ended, behind one lock.

A job is known by its claim (job id and lease token), never by its id alone: an
operator's `cancel ID; retry ID` while the daemon still streams the job gives the
same id a second claim, and the two must never share bookkeeping.

    CLAIMED --listed--> STREAMING --its last frame taken--> WRITING --settled--> FINISHED

and from any phase straight to FINISHED when the claim fails, is lost, cancelled
or released. A finished claim leaves the ledger: its frames still in the stream
are dropped, and a late write result for it counts nothing.

The loop thread claims, takes and settles; the lease keeper reads what is held
and reports lost leases from its own thread. Nothing here touches the database
or the model, so every transition is unit-tested without either.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections.abc import Callable

from argus_embedder.gateways.queue import Claim, Job


class Phase(enum.Enum):
    CLAIMED = "claimed"  # the claim committed; its frames are not listed yet
    STREAMING = "streaming"  # frames listed, some not yet in a write
    WRITING = "writing"  # every frame is in a write: the last one completes the job
    FINISHED = "finished"


class Outcome(enum.Enum):
    """How a claim ended; the values are the `outcome` label of jobs_completed_total."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # attempts used up: the job stays failed
    RETRIED = "retried"  # failed this attempt; queued again with backoff
    RELEASED = "released"  # given back without an attempt (shutdown, database outage)
    LOST = "lease_lost"  # reclaimed by another worker, or our lease expired
    CANCELLED = "cancelled"  # an operator cancelled it


@dataclasses.dataclass(eq=False)
class Entry:
    """One held claim. Mutated only by Ledger, under its lock."""

    job: Job
    claimed_at: float
    phase: Phase = Phase.CLAIMED
    pending: int = 0  # frames listed and neither taken into a write nor dropped
    outcome: Outcome | None = None

    @property
    def claim(self) -> Claim:
        return self.job.claim

    @property
    def live(self) -> bool:
        return self.phase is not Phase.FINISHED


class LedgerError(RuntimeError):
    """A transition the pipeline must never ask for (a bug, not bad data)."""


class Ledger:
    """Every claim this daemon holds. All methods are thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Claim, Entry] = {}
        self.clock = clock
        self.finished = 0  # claims ended, whatever the outcome

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def claimed(self, job: Job) -> Entry:
        """A new claim; its frames come with `listed`."""
        entry = Entry(job, claimed_at=self.clock())
        with self._lock:
            if entry.claim in self._entries:
                raise LedgerError(f"job {job.id} claimed twice with one token")
            self._entries[entry.claim] = entry
        return entry

    def earlier_claims(self, job: Job) -> list[Claim]:
        """Claims held of the same job id as `job`'s new claim: it was cancelled and
        retried while its frames still streamed, so they are void and must end."""
        with self._lock:
            return [claim for claim in self._entries if claim.job_id == job.id]

    def listed(self, claim: Claim, frames: int) -> bool:
        """The claim's missing frames are in the stream; False when it already ended."""
        with self._lock:
            entry = self._entries.get(claim)
            if entry is None:
                return False
            if entry.phase is not Phase.CLAIMED:
                raise LedgerError(f"job {claim.job_id} listed twice")
            entry.pending = frames
            entry.phase = Phase.STREAMING if frames else Phase.WRITING
            return True

    def live(self, claim: Claim) -> bool:
        """Whether frames of this claim are still worth preparing, embedding and writing."""
        with self._lock:
            return claim in self._entries

    def take(self, claim: Claim) -> bool | None:
        """One frame of the claim goes into a write: True when it is the claim's last one,
        None when the claim has ended (the frame is dropped, nothing waits on it)."""
        with self._lock:
            entry = self._entries.get(claim)
            if entry is None:
                return None
            if entry.pending == 0:
                raise LedgerError(f"job {claim.job_id}: more frames taken than listed")
            entry.pending -= 1
            if entry.pending == 0:
                entry.phase = Phase.WRITING
            return entry.pending == 0

    def finish(self, claim: Claim, outcome: Outcome) -> Entry | None:
        """End the claim; returns its entry the first time only, so it is counted once."""
        with self._lock:
            entry = self._entries.pop(claim, None)
            if entry is None:
                return None
            entry.phase = Phase.FINISHED
            entry.outcome = outcome
            self.finished += 1
            return entry

    def held(self) -> list[Job]:
        """The jobs whose leases this daemon must keep renewing."""
        with self._lock:
            return [entry.job for entry in self._entries.values()]

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())

    def get(self, claim: Claim) -> Entry | None:
        with self._lock:
            return self._entries.get(claim)
