"""The pipeline's decisions between claim and write, with no PostgreSQL and no model:
which frames a batch takes, which become rows or error rows, which jobs fail."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from argus_embedder import errors
from argus_embedder.gateways.queue import Frame, Job
from argus_embedder.pipeline import inference, preparing
from argus_embedder.pipeline.ledger import Ledger, Outcome
from argus_embedder.pipeline.stream import Item, Stream
from tests.unit.test_ledger import make_job


def prepared_item(job: Job, frame_id: int, output: Any, *, last: bool = False) -> Item:
    future: concurrent.futures.Future[preparing.Prepared] = concurrent.futures.Future()
    future.set_result(preparing.Prepared(output))
    return Item(job, Frame(frame_id, f"s3://b/{frame_id}"), future=future, last=last)


class FakeEmbedder:
    """Vectors from the input's number; `poison` inputs crash the whole forward pass."""

    model = "m"
    dimension = 4
    batch_size = 8
    preprocessing = "test"
    recipe: Any = None

    def __init__(self, poison: frozenset[float] = frozenset()) -> None:
        self.poison = poison
        self.calls: list[int] = []

    def prepare(self, data: bytes) -> Any:
        raise NotImplementedError

    def embed(self, images: Sequence[Any]) -> npt.NDArray[np.float32]:
        self.calls.append(len(images))
        if self.poison & set(images):
            raise RuntimeError("CUDA error: an illegal memory access")
        return np.array([[value, 0, 0, 0] for value in images], dtype=np.float32)


def test_rows_come_out_per_claim_with_error_rows_and_completion() -> None:
    a, b = make_job(1), make_job(2)
    batch = [
        prepared_item(a, 10, 1.0),
        prepared_item(a, 11, errors.FrameError("not an image"), last=True),
        prepared_item(b, 20, 2.0),
    ]
    result = inference.embed_batch(FakeEmbedder(), batch)
    assert result.failures == []
    by_job = {write.job.id: write for write in result.writes}
    assert by_job[1].complete and not by_job[2].complete
    assert [row.frame_id for row in by_job[1].results] == [10, 11]
    assert by_job[1].results[1].error == "not an image"
    assert by_job[1].failed == 1
    assert by_job[2].results[0].vector is not None


def test_a_non_finite_vector_becomes_an_error_row() -> None:
    job = make_job(1)
    batch = [prepared_item(job, 10, float("nan")), prepared_item(job, 11, 1.0)]
    result = inference.embed_batch(FakeEmbedder(), batch)
    rows = result.writes[0].results
    assert rows[0].vector is None and "non-finite" in (rows[0].error or "")
    assert rows[1].vector is not None


def test_a_transient_fault_fails_its_job_and_gives_the_attempt_back() -> None:
    flaky, fine = make_job(1), make_job(2)
    batch = [
        prepared_item(flaky, 10, 1.0),
        prepared_item(flaky, 11, errors.TransientError("S3 503 SlowDown")),
        prepared_item(fine, 20, 2.0),
    ]
    result = inference.embed_batch(FakeEmbedder(), batch)
    [failure] = result.failures
    assert failure.job is flaky and failure.transient
    assert [write.job.id for write in result.writes] == [2]  # nothing of the failed job


def test_an_unforeseen_preparation_error_fails_its_job_with_the_attempt_counted() -> None:
    job = make_job(1)
    result = inference.embed_batch(FakeEmbedder(), [prepared_item(job, 10, KeyError("x"))])
    [failure] = result.failures
    assert not failure.transient and failure.error.startswith("KeyError")
    assert result.writes == []


def test_a_model_crash_is_retried_claim_by_claim_so_only_the_poison_job_fails() -> None:
    poison, innocent = make_job(1), make_job(2)
    embedder = FakeEmbedder(poison=frozenset({9.0}))
    batch = [prepared_item(poison, 10, 9.0), prepared_item(innocent, 20, 2.0)]
    result = inference.embed_batch(embedder, batch)
    assert embedder.calls == [2, 1, 1]  # the batch, then each claim alone
    [failure] = result.failures
    assert failure.job is poison and "illegal memory access" in failure.error
    assert [write.job.id for write in result.writes] == [2]


def stream_of(ledger: Ledger, items: list[Item]) -> Stream:
    stream = Stream(None, None, ledger, None, None, frames_per_job=1)  # type: ignore[arg-type]
    stream._items.extend(items)
    return stream


def test_a_batch_drops_frames_of_ended_claims_and_marks_each_claims_last_frame() -> None:
    ledger = Ledger()
    kept, cancelled = make_job(1), make_job(2)
    for job, frames in ((kept, 2), (cancelled, 2)):
        ledger.claimed(job)
        ledger.listed(job.claim, frames)
    items = [Item(kept, Frame(1, "a")), Item(cancelled, Frame(3, "c")), Item(kept, Frame(2, "b"))]
    items[1].future = concurrent.futures.Future()
    ledger.finish(cancelled.claim, Outcome.CANCELLED)

    batch = stream_of(ledger, items).take(8)
    assert [item.frame.id for item in batch] == [1, 2]
    assert [item.last for item in batch] == [False, True]
    assert items[1].future.cancelled()  # the dropped frame's fetch is not waited for


def test_one_frame_twice_in_a_batch_keeps_the_newer_claims_copy() -> None:
    ledger = Ledger()
    older, newer = make_job(1), make_job(2)
    for job in (older, newer):
        ledger.claimed(job)
        ledger.listed(job.claim, 1)
    batch = stream_of(ledger, [Item(older, Frame(5, "x")), Item(newer, Frame(5, "x"))]).take(8)
    assert [item.job for item in batch] == [newer]


@pytest.mark.parametrize("size", [1, 2])
def test_a_batch_takes_at_most_its_size(size: int) -> None:
    ledger = Ledger()
    job = make_job(1)
    ledger.claimed(job)
    ledger.listed(job.claim, 3)
    stream = stream_of(ledger, [Item(job, Frame(i, str(i))) for i in range(3)])
    assert len(stream.take(size)) == size
    assert len(stream) == 3 - size
