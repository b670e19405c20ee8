"""Inference: a batch of prepared frames in, each claim's rows (vectors or error rows) out.

Nothing here touches the database. What cannot become a row is returned as a
job failure for the worker to record: a frame that hit a transient fault after
its retries, an error nobody foresaw, or a batch that crashes the model (then
retried claim by claim, so one poison job fails alone instead of its batch-mates).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from argus_embedder import errors, metrics
from argus_embedder.gateways import store
from argus_embedder.gateways.queue import Claim, Job
from argus_embedder.pipeline.recipe import Recipe
from argus_embedder.pipeline.stream import Item

log = logging.getLogger(__name__)

_DOWNLOAD, _DECODE, _INFER = (
    metrics.STAGE_DURATION.labels(stage=stage) for stage in ("download", "decode", "infer")
)


class EmbedderLike(Protocol):
    """What the pipeline needs from argus_embedder.pipeline.embedder.Embedder."""

    model: str
    dimension: int
    batch_size: int
    preprocessing: str
    recipe: Recipe  # its bound `prepare` pickles: decode processes use it

    def prepare(self, data: bytes) -> Any: ...

    def embed(self, images: Sequence[Any]) -> npt.NDArray[np.float32]: ...


@dataclasses.dataclass(frozen=True)
class JobFailure:
    """A claim whose attempt fails: `transient` ones give the attempt back."""

    job: Job
    error: str
    transient: bool = False


@dataclasses.dataclass
class Embedded:
    """A batch's result: rows to write per claim, and claims to fail instead."""

    writes: list[store.JobWrite] = dataclasses.field(default_factory=list)
    failures: list[JobFailure] = dataclasses.field(default_factory=list)


def embed_batch(embedder: EmbedderLike, batch: list[Item]) -> Embedded:
    """Wait for the batch's prepared frames and embed the good ones."""
    outputs = {id(item): _prepared(item) for item in batch}
    _finish_decoding(embedder, batch, outputs)
    result = Embedded(failures=_failures_of_preparation(batch, outputs))
    failed = {failure.job.claim for failure in result.failures}
    good = [
        item
        for item in batch
        if item.claim not in failed and not isinstance(outputs[id(item)], Exception)
    ]
    vectors, crashed = _embed_isolating_crashes(embedder, good, outputs)
    result.failures.extend(crashed)
    failed |= {failure.job.claim for failure in crashed}

    rows: dict[Claim, list[store.FrameResult]] = {}
    jobs: dict[Claim, tuple[Job, bool]] = {}
    for item in batch:
        if item.claim in failed:
            continue
        output = outputs[id(item)]
        row = (
            store.FrameResult(item.frame.id, error=str(output)[:1000])
            if isinstance(output, errors.FrameError)
            else store.embedded(item.frame.id, vectors[id(item)])
        )
        rows.setdefault(item.claim, []).append(row)
        complete = jobs.get(item.claim, (item.job, False))[1] or item.last
        jobs[item.claim] = (item.job, complete)
    result.writes = [
        store.JobWrite(job, rows[claim], complete=complete)
        for claim, (job, complete) in jobs.items()
    ]
    return result


def _prepared(item: Item) -> Any:
    assert item.future is not None, "frames are prepared ahead of the batch"
    prepared = item.future.result()
    if isinstance(prepared.output, Exception):
        log.debug("frame %s: %s", item.frame.id, prepared.output)
    else:
        _DOWNLOAD.observe(prepared.download_seconds)
        _DECODE.observe(prepared.decode_seconds)
    return prepared.output


def _finish_decoding(embedder: EmbedderLike, batch: list[Item], outputs: dict[int, Any]) -> None:
    """Frames the decoder left to the device (ARGUS_DECODE=gpu) become pixels, or the
    FrameError that gives them their error row. Embedders that decode every frame in
    `prepare` (stand-ins in tests) need no such step."""
    finish = getattr(embedder, "finish_decoding", None)
    waiting = [item for item in batch if not isinstance(outputs[id(item)], Exception)]
    if finish is None or not waiting:
        return
    finished = finish([outputs[id(item)] for item in waiting])
    for item, output in zip(waiting, finished, strict=True):
        outputs[id(item)] = output


def _failures_of_preparation(batch: list[Item], outputs: dict[int, Any]) -> list[JobFailure]:
    """A frame that hit a transient fault (after retries) or an unexpected error fails
    its whole job with backoff, never the frame: the job comes back and resumes, and a
    job that keeps failing ends `failed` after max_attempts."""
    failures: dict[Claim, JobFailure] = {}
    for item in batch:
        output = outputs[id(item)]
        if item.claim in failures or not isinstance(output, Exception):
            continue
        if isinstance(output, errors.TransientError):
            failures[item.claim] = JobFailure(item.job, f"transient: {output}", transient=True)
        elif not isinstance(output, errors.FrameError):
            failures[item.claim] = JobFailure(item.job, f"{type(output).__name__}: {output}")
    return list(failures.values())


def _embed_isolating_crashes(
    embedder: EmbedderLike, good: list[Item], outputs: dict[int, Any]
) -> tuple[dict[int, npt.NDArray[np.float32]], list[JobFailure]]:
    """Vectors by item; if the batch crashes the model, retry it claim by claim so one
    poison job fails alone instead of taking its batch-mates down."""
    if not good:
        return {}, []
    groups: dict[Claim, list[Item]] = {}
    for item in good:
        groups.setdefault(item.claim, []).append(item)
    try:
        return _embed(embedder, good, outputs), []
    except Exception as error:
        if len(groups) == 1:
            return {}, [_crash(good[0].job, error)]
    vectors: dict[int, npt.NDArray[np.float32]] = {}
    failures = []
    for items in groups.values():
        try:
            vectors.update(_embed(embedder, items, outputs))
        except Exception as error:
            failures.append(_crash(items[0].job, error))
    return vectors, failures


def _embed(
    embedder: EmbedderLike, items: list[Item], outputs: dict[int, Any]
) -> dict[int, npt.NDArray[np.float32]]:
    started = time.perf_counter()
    vectors = embedder.embed([outputs[id(item)] for item in items])
    _INFER.observe(time.perf_counter() - started)
    metrics.BATCH_SIZE.observe(len(items))
    return {id(item): vectors[row] for row, item in enumerate(items)}


def _crash(job: Job, error: Exception) -> JobFailure:
    log.error("job %s: embedding failed", job.id, exc_info=error)
    return JobFailure(job, f"{type(error).__name__}: {error}")
