"""search_p95_growth: how `search`'s latency grows with the corpus (DESIGN §7).

For each checkpoint size a corpus of clustered 768-d unit vectors (every corpus starts
with the same vectors) is written into a model of its own the way the worker writes a
batch (segments ensured, then store.write: binary COPY plus fenced progress), while the
daemon's background index work runs beside the writes on its own connection: the
indexer's builds and appends of sealed segments and, where the compactor exists, its
merges and rebuilds (`maintain`). Once that work has caught up, `search` (the real query
path: the live units' ANN indexes plus the exact scan of what they do not cover) answers
the same QUERIES queries over every corpus, alternating corpus by corpus, after untimed
warm-up passes: their p50/p95 latency is timed and their top-10 compared with an exact
top-10 over that corpus. Alternating puts both sizes under the same machine: measured one
after the other, the ratio carried the VM's drift between the two (the same queries over
one unit ran 9.9, then 12.2, then 15.0 ms p50 minutes apart).

Every size is a whole number of segments, so the smallest fills exactly one: with the
production segment size (100,000 frame ids) the full run compares 1 segment with 10.
Without compaction a query probes every segment's index, so p95 grows with the segment
count; with units that grow in place (ivfflat) it should stay flat.

`python -m argus_embedder.bench.search_growth --sizes 4000,40000,200000 --segment-rows 4000`
prints the same measurements at any checkpoints (the 1/10/50-segment table in
docs/performance.md); it is not part of the bench or of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from argus_embedder import db
from argus_embedder.bench import dataset, vector_writes
from argus_embedder.commands import nearest
from argus_embedder.gateways import index
from argus_embedder.gateways.queue import Job, Queue

MODEL = "argus-bench/growth-768"
DIMENSION = 768
CHUNK = 10_000  # vectors drawn (and folded into the exact top-10) at a time
QUERIES = 200  # timed per checkpoint: enough for a p95 that is not one outlier
TOP = 10
# Untimed warm-up passes at each checkpoint, until one is no more than WARM_ENOUGH
# faster than the one before (at most WARM_UP_PASSES): the timed queries then meet
# the steady state of a serving database. Measured here: passes of 200 queries over
# a 1M-vector unit ran at p50 29 ms, then 18, 15, 13, 12, 10 as the memory under it
# warmed, while a 100k unit is warm after one.
WARM_UP_PASSES = 10
WARM_ENOUGH = 0.1
# The kind a growing corpus should use: an ivfflat unit grows in place and a query
# probes one unit at any size; hnsw units merge in tiers, so its probes grow with the
# number of tiers (`--index hnsw` measures that).
KIND = "ivfflat"
COMPACTOR = "argus_embedder.services.compactor"

FloatArray = npt.NDArray[np.float32]
CompactOnce = Callable[[psycopg.Connection[Any], str], bool]


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Search over a corpus of `vectors` vectors, once the background work caught up."""

    vectors: int
    segments: int  # segments holding the model's vectors (fewer once merged)
    segments_indexed: int
    recall_at_10: float
    search_ms_p50: float  # the queries alternating with the other corpora's: the figure's
    search_ms_p95: float
    alone_ms_p50: float  # the same queries again, back to back over this corpus alone
    alone_ms_p95: float
    warm_up_ms_p50: list[float]  # each untimed pass's p50, the first one cold
    write_seconds: float  # writing the corpus
    catch_up_seconds: float  # the background work still to do once the writes stopped


@dataclasses.dataclass
class Maintenance:
    """What `maintain` did over a run."""

    compaction: bool  # the compactor module exists, so merges ran
    segments_built: int = 0
    merges: int = 0
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class Result:
    kind: str
    segment_rows: int
    clusters: int
    queries: int
    checkpoints: list[Checkpoint]
    maintenance: Maintenance


def p95_growth(result: Result) -> float:
    """The last checkpoint's p95 ÷ the first's."""
    return result.checkpoints[-1].search_ms_p95 / result.checkpoints[0].search_ms_p95


def compactor() -> CompactOnce | None:
    """`services.compactor.compact_once` where that module exists, else None."""
    try:
        module = importlib.import_module(COMPACTOR)
    except ModuleNotFoundError as error:
        if error.name != COMPACTOR:
            raise  # the compactor exists but cannot import: that must not read as "absent"
        return None
    compact_once: CompactOnce = module.compact_once
    return compact_once


def maintain(
    connection: psycopg.Connection[Any], model: str, done: Maintenance, stopping: threading.Event
) -> bool:
    """One round of what the daemon's background services do for `model`'s index: build
    the sealed segments' indexes (services/indexer), then merge segments until the
    compactor finds nothing to merge (services/compactor, where it exists). Returns
    whether it did any work."""
    started = time.perf_counter()
    built = index.build_sealed(connection, model)
    merges = 0
    compact_once = compactor() if done.compaction else None
    while compact_once is not None and not stopping.is_set() and compact_once(connection, model):
        merges += 1
    done.segments_built += len(built)
    done.merges += merges
    done.seconds += time.perf_counter() - started
    return bool(built or merges)


def run(
    url: str,
    sizes: Sequence[int],
    *,
    segment_rows: int,
    kind: str = KIND,
    queries: int = QUERIES,
    seed: int = 1768,
) -> Result:
    """Write a corpus of each of `sizes` vectors (ascending, each a multiple of
    `segment_rows`; every corpus starts with the same vectors) with the background work
    running, then measure search over all of them, alternating query by query."""
    if not sizes or list(sizes) != sorted(set(sizes)) or any(s % segment_rows for s in sizes):
        raise dataset.BenchError(
            f"sizes {list(sizes)} must ascend and each be a multiple of {segment_rows}"
        )
    rng = np.random.default_rng(seed)
    # The same mixture at every size: a larger corpus has more frames of the same scenes.
    clusters = max(8, sizes[-1] // 1000)
    centres = _unit(rng.standard_normal((clusters, DIMENSION), dtype=np.float32))
    asked = _draw(centres, queries, rng)
    warm_up = _draw(centres, queries, rng)  # drawn apart from the timed ones, as many
    stream = int(rng.integers(2**32))  # seeds the vectors every corpus is written from
    done = Maintenance(compaction=compactor() is not None)
    with db.connect(url, autocommit=True) as connection:
        corpora = [
            _write_corpus(
                connection,
                url,
                _Corpus(model_name(size, sizes), size, _Truth(asked)),
                segment_rows=segment_rows,
                kind=kind,
                vectors=_Stream(centres, stream),
                done=done,
            )
            for size in sizes
        ]
        checkpoints = _measure(connection, corpora, warm_up, asked)
    return Result(kind, segment_rows, clusters, queries, checkpoints, done)


def model_name(size: int, sizes: Sequence[int]) -> str:
    """The largest corpus is MODEL's; each smaller one is a model of its own."""
    return MODEL if size == sizes[-1] else f"{MODEL}@{size}"


@dataclasses.dataclass
class _Corpus:
    """One checkpoint's vectors, written into a model of their own."""

    model: str
    size: int
    truth: _Truth
    write_seconds: float = 0.0
    catch_up_seconds: float = 0.0


class _Stream:
    """The vectors every corpus is written from, drawn in CHUNKs from one seed: the
    first N of a larger corpus are a smaller corpus's N."""

    def __init__(self, centres: FloatArray, seed: int) -> None:
        self._centres = centres
        self._rng = np.random.default_rng(seed)

    def next(self, count: int) -> FloatArray:
        return _draw(self._centres, count, self._rng)


def _write_corpus(
    connection: psycopg.Connection[Any],
    url: str,
    corpus: _Corpus,
    *,
    segment_rows: int,
    kind: str,
    vectors: _Stream,
    done: Maintenance,
) -> _Corpus:
    """Write `corpus` through the worker's write path with the background work beside
    the writes, then let that work catch up (every sealed segment in a unit)."""
    model = index.register(connection, corpus.model, DIMENSION, kind, segment_rows=segment_rows)
    job, frame_ids = _job_with_frames(connection, corpus, segment_rows)
    segments = index.Segments(model)
    with _background(url, corpus.model, done) as write_started:
        for start in range(0, corpus.size, CHUNK):
            chunk = vectors.next(min(CHUNK, corpus.size - start))
            ids = frame_ids[start : start + len(chunk)]
            vector_writes.write(connection, segments, job, ids, chunk)
            corpus.truth.add(ids, chunk)
        corpus.write_seconds = time.perf_counter() - write_started
    started = time.perf_counter()
    while maintain(connection, corpus.model, done, threading.Event()):
        pass
    corpus.catch_up_seconds = time.perf_counter() - started
    return corpus


@contextlib.contextmanager
def _background(url: str, model: str, done: Maintenance) -> Iterator[float]:
    """`maintain` on its own connection in a thread, as the daemon's services run it,
    until the block ends (then it finishes its round: joined, never left behind).
    Yields the time the block started."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            with db.connect(url, autocommit=True) as connection:
                while not stop.is_set():
                    if not maintain(connection, model, done, stop):
                        stop.wait(0.5)
        except BaseException as error:  # re-raised in the bench's thread below
            failure.append(error)

    thread = threading.Thread(target=loop, name="bench-maintenance", daemon=True)
    thread.start()
    try:
        yield time.perf_counter()
    finally:
        stop.set()
        thread.join()
    if failure:
        raise dataset.BenchError(f"background index work failed: {failure[0]}") from failure[0]


def _measure(
    connection: psycopg.Connection[Any],
    corpora: Sequence[_Corpus],
    warm_up: FloatArray,
    asked: FloatArray,
) -> list[Checkpoint]:
    """Time the same queries over every corpus, alternating corpus by corpus within each
    query (the starting corpus rotating), so a machine whose speed drifts during the
    run (measured here: the same 200 queries 9.9, then 12.2, then 15.0 ms p50 minutes
    apart) slows every size alike and the ratio between sizes holds."""
    passes: list[list[float]] = [[] for _ in corpora]
    while len(passes[0]) < WARM_UP_PASSES:
        for corpus_passes, (timings, _) in zip(
            passes, _alternate(connection, corpora, warm_up), strict=True
        ):
            corpus_passes.append(statistics.median(timings) * 1000)
        if len(passes[0]) > 1 and all(p[-1] >= (1 - WARM_ENOUGH) * p[-2] for p in passes):
            break
    timed = _alternate(connection, corpora, asked)
    # Back to back, a small corpus also keeps its pages in the CPU's caches between
    # queries; reported beside the figure, not in it.
    alone = [_alternate(connection, [corpus], asked)[0][0] for corpus in corpora]
    checkpoints = []
    for corpus, corpus_passes, (latencies, hits), by_itself in zip(
        corpora, passes, timed, alone, strict=True
    ):
        expected = corpus.truth.ids()
        recalls = [
            len(set(found) & set(truth.tolist())) / TOP
            for found, truth in zip(hits, expected, strict=True)
        ]
        report = connection.execute(
            db.queries()["segment_report"], {"model": corpus.model}
        ).fetchall()
        checkpoints.append(
            Checkpoint(
                vectors=corpus.size,
                segments=len(report),
                segments_indexed=sum(1 for row in report if row["index_name"] is not None),
                recall_at_10=float(np.mean(recalls)),
                search_ms_p50=statistics.median(latencies) * 1000,
                search_ms_p95=float(np.percentile(latencies, 95)) * 1000,
                alone_ms_p50=statistics.median(by_itself) * 1000,
                alone_ms_p95=float(np.percentile(by_itself, 95)) * 1000,
                warm_up_ms_p50=corpus_passes,
                write_seconds=corpus.write_seconds,
                catch_up_seconds=corpus.catch_up_seconds,
            )
        )
    return checkpoints


def _alternate(
    connection: psycopg.Connection[Any], corpora: Sequence[_Corpus], queries: FloatArray
) -> list[tuple[list[float], list[list[int]]]]:
    """Each query over every corpus in turn, starting one corpus later for each query;
    per corpus, each query's seconds and the frame ids it found."""
    found: list[tuple[list[float], list[list[int]]]] = [([], []) for _ in corpora]
    for number, query in enumerate(queries):
        for turn in range(len(corpora)):
            which = (number + turn) % len(corpora)
            started = time.perf_counter()
            hits = nearest.frames(connection, corpora[which].model, query, limit=TOP)
            found[which][0].append(time.perf_counter() - started)
            found[which][1].append([hit.frame_id for hit in hits])
    return found


class _Truth:
    """The exact top-10 of each query over every vector added so far, kept as the vectors
    stream by (a million 768-d vectors need not sit in memory at once)."""

    def __init__(self, queries: FloatArray) -> None:
        # The index ranks halfvec distances; brute force on the same rounding is fair.
        self._queries = queries.astype(np.float16).astype(np.float32)
        self._scores = np.full((len(queries), TOP), -np.inf, dtype=np.float32)
        self._ids = np.full((len(queries), TOP), -1, dtype=np.int64)

    def add(self, frame_ids: Sequence[int], vectors: FloatArray) -> None:
        scores = self._queries @ vectors.astype(np.float16).astype(np.float32).T
        ids = np.broadcast_to(np.asarray(frame_ids, dtype=np.int64), scores.shape)
        scores = np.concatenate([self._scores, scores], axis=1)
        ids = np.concatenate([self._ids, ids], axis=1)
        best = np.argpartition(-scores, TOP - 1, axis=1)[:, :TOP]
        self._scores = np.take_along_axis(scores, best, axis=1)
        self._ids = np.take_along_axis(ids, best, axis=1)

    def ids(self) -> npt.NDArray[np.int64]:
        return self._ids


def _draw(centres: FloatArray, count: int, rng: np.random.Generator) -> FloatArray:
    """`count` unit vectors around random `centres` (cosine to the centre ~0.78), as
    vector_writes.clustered draws them."""
    members = rng.integers(0, len(centres), count)
    spread = rng.standard_normal((count, DIMENSION), dtype=np.float32) * (0.8 / DIMENSION**0.5)
    return _unit(centres[members] + spread)


def _unit(rows: FloatArray) -> FloatArray:
    return np.ascontiguousarray(rows / np.linalg.norm(rows, axis=1, keepdims=True))


def _job_with_frames(
    connection: psycopg.Connection[Any], corpus: _Corpus, segment_rows: int
) -> tuple[Job, list[int]]:
    """A running job of the corpus's model (so writes are fenced, as the daemon's are)
    over `corpus.size` frame rows whose ids start a segment: a segment seals only once
    every frame in its id range has a row, so one shared with other frames would never
    seal."""
    video_id = f"search-growth-{corpus.size}"
    uri = f"s3://{dataset.BUCKET}/unused.jpg"  # these frames are never downloaded
    connection.execute(db.queries()["bench_align_frame_ids"], {"rows": segment_rows})
    dataset.add_videos(connection, {video_id: [uri] * corpus.size}, model=corpus.model)
    # A long lease: the bulk builds and the searches between the writes must not expire it.
    queue = Queue(model=corpus.model, worker_id="argus-bench", lease_seconds=3600)
    claimed = queue.claim(connection)
    if len(claimed) != 1:
        raise dataset.BenchError(f"expected to claim the growth job, got {len(claimed)}")
    rows = connection.execute(db.queries()["bench_frame_ids"], {"video_id": video_id})
    frame_ids = [int(row["id"]) for row in rows]
    if frame_ids[0] % segment_rows or frame_ids[-1] - frame_ids[0] != corpus.size - 1:
        raise dataset.BenchError("the growth frames do not fill whole segments in order")
    return claimed[0], frame_ids


def main(argv: Sequence[str] | None = None) -> int:
    """Measure search at the given checkpoints on a scratch database; print JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m argus_embedder.bench.search_growth",
        description="search p50/p95 and recall@10 as clustered 768-d vectors grow "
        "(on ARGUS_DATABASE_URL's server, else the embedded PostgreSQL; database argus_bench)",
    )
    parser.add_argument("--sizes", default="4000,40000,200000", help="checkpoints, ascending")
    parser.add_argument("--segment-rows", type=int, default=4000)
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument("--index", choices=("hnsw", "ivfflat"), default=KIND)
    args = parser.parse_args(argv)
    from argus_embedder import settings

    admin_url = settings.load().database_url or db.embedded_url()
    sizes = [int(size) for size in args.sizes.split(",")]
    started, load = time.perf_counter(), os.getloadavg()
    with dataset.scratch_database(admin_url) as url:
        result = run(
            url, sizes, segment_rows=args.segment_rows, kind=args.index, queries=args.queries
        )
        versions = dataset.server_versions(url)
    report = dataclasses.asdict(result)
    report["seconds"] = time.perf_counter() - started
    report["database"] = versions
    # A shared machine: the load says how much of the latency is other people's work.
    report["load_average"] = {"start": load, "end": os.getloadavg()}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
