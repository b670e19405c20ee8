"""768-d vectors without a model: the write rate of the daemon's write path, search recall.

One set of clustered unit vectors serves both, written the way the worker writes a batch
(segments ensured, then store.write: binary COPY plus fenced progress) into a model registered
with an HNSW index. Most are written first, filling whole segments; those are sealed and
bulk-indexed (index.build_sealed, as the daemon's indexer does); the rest are written after
that, so they sit in a segment no ANN index covers yet. Search's top-10 is then compared with
an exact top-10 over everything, late vectors included.

Run it first on a fresh database: frame ids then start at 1 and segments align with frames.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from argus_embedder import db
from argus_embedder.bench import dataset
from argus_embedder.commands import nearest
from argus_embedder.gateways import index, store
from argus_embedder.gateways.queue import Job, Queue
from argus_embedder.services import compactor

MODEL = "argus-bench/vectors-768"
DIMENSION = 768
WRITE_BATCH = 500  # rows per write: a large GPU batch
SEGMENTS = 10  # the vectors span this many segments; the last one is written late
QUERIES = 50
TOP = 10

FloatArray = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class KindResult:
    """Search over the same vectors with one index kind on the sealed segments."""

    kind: str
    segments_indexed: int
    build_seconds: float
    index_bytes: int
    recall_at_10: float
    search_ms_median: float
    search_ms_p95: float


@dataclasses.dataclass(frozen=True)
class Result:
    vectors: int
    late_vectors: int
    clusters: int
    segment_rows: int
    writes_per_second: float  # the early vectors, into a model registered with HNSW
    late_writes_per_second: float  # after the bulk builds, beside indexed segments
    index_kind: str
    segments_indexed: int
    index_build_seconds: float
    recall_at_10: float
    search_ms_median: float
    search_ms_p95: float
    table_bytes: int
    index_bytes: int
    other_kinds: list[KindResult]


def clustered(count: int, clusters: int, rng: np.random.Generator) -> FloatArray:
    """`count` unit vectors around `clusters` random centres (cosine to the centre ~0.78)."""
    centres = _unit(rng.standard_normal((clusters, DIMENSION), dtype=np.float32))
    members = rng.integers(0, clusters, count)
    spread = rng.standard_normal((count, DIMENSION), dtype=np.float32) * (0.8 / DIMENSION**0.5)
    return _unit(centres[members] + spread)


def _unit(rows: FloatArray) -> FloatArray:
    return np.ascontiguousarray(rows / np.linalg.norm(rows, axis=1, keepdims=True))


def run(url: str, count: int, *, seed: int = 768, other_kinds: Sequence[str] = ()) -> Result:
    """Write `count` clustered vectors, bulk-index most of them, then measure search recall.

    With `other_kinds` (ivfflat, none), the same vectors are then re-indexed with each kind
    in turn and searched again, for the trade-offs (build time, size, recall, latency).
    """
    rng = np.random.default_rng(seed)
    clusters = max(8, count // 1000)
    # Queries are extra draws from the same distribution as the data.
    everything = clustered(count + QUERIES, clusters, rng)
    vectors, queries = everything[:count], everything[count:]
    segment_rows = max(WRITE_BATCH, count // SEGMENTS)
    with db.connect(url, autocommit=True) as connection:
        model = index.register(connection, MODEL, DIMENSION, "hnsw", segment_rows=segment_rows)
        job, frame_ids = _job_with_frames(connection, count)
        # Early: the frames below the last full segment's worth, whose segments then seal.
        cutoff = (frame_ids[-1] - segment_rows + 1) // segment_rows * segment_rows
        early = sum(1 for frame_id in frame_ids if frame_id < cutoff)
        segments = index.Segments(model)
        # In a daemon the segments task creates segments ahead of the writes
        # (services/indexer.segments_task); here every frame exists before the first
        # write, so create their segments first, untimed, as that task would have.
        segments.ensure(connection, frame_ids)
        early_seconds = write(connection, segments, job, frame_ids[:early], vectors[:early])
        started = time.perf_counter()
        built = index.build_sealed(connection, MODEL)
        build_seconds = time.perf_counter() - started
        late_seconds = write(connection, segments, job, frame_ids[early:], vectors[early:])
        recall, latencies = _recall(connection, frame_ids, vectors, queries)
        table_bytes, index_bytes = _sizes(connection)
        others = [_reindex(connection, kind, frame_ids, vectors, queries) for kind in other_kinds]
    return Result(
        vectors=count,
        late_vectors=count - early,
        clusters=clusters,
        segment_rows=segment_rows,
        writes_per_second=early / early_seconds,
        late_writes_per_second=(count - early) / late_seconds,
        index_kind=model.index_kind,
        segments_indexed=len(built),
        index_build_seconds=build_seconds,
        recall_at_10=recall,
        search_ms_median=statistics.median(latencies) * 1000,
        search_ms_p95=float(np.percentile(latencies, 95)) * 1000,
        table_bytes=table_bytes,
        index_bytes=index_bytes,
        other_kinds=others,
    )


def _reindex(
    connection: psycopg.Connection[Any],
    kind: str,
    frame_ids: Sequence[int],
    vectors: FloatArray,
    queries: FloatArray,
) -> KindResult:
    """Switch the model to `kind` (dropping the old indexes), build the units as the daemon's
    indexer and compactor would leave them (ivfflat: one unit, grown by appends), and
    search again."""
    index.register(connection, MODEL, DIMENSION, kind)
    started = time.perf_counter()
    built = index.build_sealed(connection, MODEL)
    while compactor.compact_once(connection, MODEL):
        pass
    build_seconds = time.perf_counter() - started
    recall, latencies = _recall(connection, frame_ids, vectors, queries)
    return KindResult(
        kind=kind,
        segments_indexed=len(built),
        build_seconds=build_seconds,
        index_bytes=_sizes(connection)[1],
        recall_at_10=recall,
        search_ms_median=statistics.median(latencies) * 1000,
        search_ms_p95=float(np.percentile(latencies, 95)) * 1000,
    )


def _sizes(connection: psycopg.Connection[Any]) -> tuple[int, int]:
    row = connection.execute(db.queries()["bench_index_bytes"], {"model": MODEL}).fetchone()
    assert row is not None
    return int(row["table_bytes"]), int(row["index_bytes"])


def _job_with_frames(connection: psycopg.Connection[Any], count: int) -> tuple[Job, list[int]]:
    """A running job (so writes are fenced, as the daemon's are) over `count` frame rows."""
    video_id = "vectors-768"
    uri = f"s3://{dataset.BUCKET}/unused.jpg"  # these frames are never downloaded
    dataset.add_videos(connection, {video_id: [uri] * count}, model=MODEL)
    # A long lease: the bulk index builds between the writes must not expire it.
    claimed = Queue(model=MODEL, worker_id="argus-bench", lease_seconds=3600).claim(connection)
    if len(claimed) != 1:
        raise dataset.BenchError(f"expected to claim the vectors job, got {len(claimed)}")
    rows = connection.execute(db.queries()["bench_frame_ids"], {"video_id": video_id})
    return claimed[0], [int(row["id"]) for row in rows]


def write(
    connection: psycopg.Connection[Any],
    segments: index.Segments,
    job: Job,
    frame_ids: Sequence[int],
    vectors: FloatArray,
) -> float:
    """The worker's write path in WRITE_BATCH chunks; returns the seconds it took.

    Also the search-growth bench's writer: one path, so both measure the same writes."""
    started = time.perf_counter()
    for start in range(0, len(frame_ids), WRITE_BATCH):
        chunk = frame_ids[start : start + WRITE_BATCH]
        segments.ensure(connection, chunk)
        results = [
            store.FrameResult(frame_id, vector=vector)
            for frame_id, vector in zip(chunk, vectors[start : start + WRITE_BATCH], strict=True)
        ]
        outcome = store.write(
            connection,
            [store.JobWrite(job, results)],
            preprocessing="argus-bench-synthetic",
            lease_seconds=3600,
        )
        if outcome.lost or outcome.refused:
            raise dataset.BenchError(f"the bench job's write failed: {outcome}")
    return time.perf_counter() - started


def _recall(
    connection: psycopg.Connection[Any],
    frame_ids: Sequence[int],
    vectors: FloatArray,
    queries: FloatArray,
) -> tuple[float, list[float]]:
    """Mean recall@10 of search against brute force, and each search's latency (seconds)."""
    # The index ranks halfvec distances; brute force on the same rounding is the fair truth.
    stored = vectors.astype(np.float16).astype(np.float32)
    asked = queries.astype(np.float16).astype(np.float32)
    ids = np.asarray(frame_ids, dtype=np.int64)
    exact = np.argsort(-(asked @ stored.T), axis=1)[:, :TOP]
    recalls, latencies = [], []
    for query, truth in zip(queries, exact, strict=True):
        started = time.perf_counter()
        hits = nearest.frames(connection, MODEL, query, limit=TOP)
        latencies.append(time.perf_counter() - started)
        found = {hit.frame_id for hit in hits}
        recalls.append(len(found & set(ids[truth].tolist())) / TOP)
    return float(np.mean(recalls)), latencies
