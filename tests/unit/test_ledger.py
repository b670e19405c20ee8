"""The job ledger's transitions: no PostgreSQL, no model."""

from __future__ import annotations

import threading
import uuid

import pytest

from argus_embedder.gateways.queue import Claim, Job
from argus_embedder.pipeline.ledger import Ledger, LedgerError, Outcome, Phase


def make_job(job_id: int = 1, token: uuid.UUID | None = None) -> Job:
    return Job(
        id=job_id,
        video_id=f"video-{job_id}",
        model="m",
        attempts=1,
        max_attempts=5,
        lease_token=token or uuid.uuid4(),
        queue_wait_seconds=0.0,
    )


def test_a_claim_streams_then_writes_then_finishes() -> None:
    ledger = Ledger()
    job = make_job()
    entry = ledger.claimed(job)
    assert entry.phase is Phase.CLAIMED
    assert ledger.held() == [job]

    assert ledger.listed(entry.claim, 3)
    assert entry.phase is Phase.STREAMING
    assert ledger.take(entry.claim) is False
    assert ledger.take(entry.claim) is False
    assert ledger.take(entry.claim) is True  # the last frame: its write completes the job
    assert entry.phase is Phase.WRITING
    assert ledger.held() == [job]  # still renewed until the write settles

    finished = ledger.finish(entry.claim, Outcome.SUCCEEDED)
    assert finished is entry
    assert entry.phase is Phase.FINISHED
    assert entry.outcome is Outcome.SUCCEEDED
    assert ledger.held() == []
    assert ledger.finished == 1


def test_a_claim_with_nothing_left_to_embed_goes_straight_to_writing() -> None:
    ledger = Ledger()
    entry = ledger.claimed(make_job())
    ledger.listed(entry.claim, 0)
    assert entry.phase is Phase.WRITING


def test_finish_counts_once() -> None:
    ledger = Ledger()
    entry = ledger.claimed(make_job())
    assert ledger.finish(entry.claim, Outcome.FAILED) is entry
    assert ledger.finish(entry.claim, Outcome.SUCCEEDED) is None
    assert entry.outcome is Outcome.FAILED
    assert ledger.finished == 1


def test_lost_mid_write_drops_the_rest_of_its_frames() -> None:
    ledger = Ledger()
    entry = ledger.claimed(make_job())
    ledger.listed(entry.claim, 4)
    ledger.take(entry.claim)  # one frame is in a write in flight

    lost = ledger.finish(entry.claim, Outcome.LOST)
    assert lost is not None and lost.outcome is Outcome.LOST
    assert not ledger.live(entry.claim)
    assert ledger.take(entry.claim) is None  # frames still in the stream are dropped
    assert ledger.finish(entry.claim, Outcome.LOST) is None  # the write's "lost" counts nothing


def test_cancelled_claims_end_as_cancelled() -> None:
    ledger = Ledger()
    entry = ledger.claimed(make_job())
    ledger.listed(entry.claim, 2)
    ended = ledger.finish(entry.claim, Outcome.CANCELLED)
    assert ended is not None and ended.outcome is Outcome.CANCELLED
    assert ledger.held() == []


def test_a_reclaimed_job_id_is_a_separate_claim() -> None:
    """cancel ID; retry ID while the old claim still streams: the new claim is its own entry."""
    ledger = Ledger()
    old = ledger.claimed(make_job(7))
    ledger.listed(old.claim, 2)
    retried = make_job(7)
    assert ledger.earlier_claims(retried) == [old.claim]  # void: they must end
    new = ledger.claimed(retried)
    ledger.listed(new.claim, 2)
    assert old.claim != new.claim
    assert old.claim.job_id == new.claim.job_id

    ledger.finish(old.claim, Outcome.LOST)
    assert ledger.live(new.claim)
    assert ledger.take(old.claim) is None
    assert ledger.take(new.claim) is False
    assert ledger.held() == [new.job]


def test_the_same_claim_twice_is_a_bug() -> None:
    ledger = Ledger()
    job = make_job()
    ledger.claimed(job)
    with pytest.raises(LedgerError):
        ledger.claimed(job)


def test_failed_mid_batch_keeps_its_frames_out_of_the_write() -> None:
    ledger = Ledger()
    failing, innocent = ledger.claimed(make_job(1)), ledger.claimed(make_job(2))
    ledger.listed(failing.claim, 2)
    ledger.listed(innocent.claim, 1)
    assert ledger.take(failing.claim) is False
    assert ledger.take(innocent.claim) is True
    ledger.finish(failing.claim, Outcome.RETRIED)  # e.g. the model crashed on its frames
    assert not ledger.live(failing.claim)
    assert ledger.live(innocent.claim)
    assert ledger.take(failing.claim) is None
    assert ledger.held() == [innocent.job]


def test_taking_more_frames_than_listed_is_a_bug() -> None:
    ledger = Ledger()
    entry = ledger.claimed(make_job())
    ledger.listed(entry.claim, 1)
    ledger.take(entry.claim)
    with pytest.raises(LedgerError):
        ledger.take(entry.claim)


def test_listing_an_ended_claim_says_so() -> None:
    ledger = Ledger()
    entry = ledger.claimed(make_job())
    ledger.finish(entry.claim, Outcome.LOST)
    assert ledger.listed(entry.claim, 3) is False


def test_claim_is_id_and_token() -> None:
    token = uuid.uuid4()
    assert make_job(3, token).claim == Claim(3, token)


def test_the_lease_keeper_and_the_loop_share_it_safely() -> None:
    ledger = Ledger()
    entries = [ledger.claimed(make_job(i)) for i in range(200)]
    for entry in entries:
        ledger.listed(entry.claim, 1)
    seen: list[int] = []

    def keeper() -> None:
        for _ in range(200):
            seen.append(len(ledger.held()))
            ledger.finish(entries[0].claim, Outcome.LOST)

    thread = threading.Thread(target=keeper)
    thread.start()
    for entry in entries[1:]:
        ledger.take(entry.claim)
        ledger.finish(entry.claim, Outcome.SUCCEEDED)
    thread.join()
    assert ledger.held() == []
    assert ledger.finished == 200
    assert all(0 <= count <= 200 for count in seen)
