"""Unit build rates, write amplification and search latency before/after compaction
(docs/performance.md, "Compaction"). Usage, against a scratch database:

    .venv/bin/python docs/measurements/compaction_rates.py URL [ROWS] [SEGMENT_ROWS]

It registers a 768-d model, writes ROWS clustered vectors through the store's COPY,
then runs services.compactor.compact_once until idle, printing each unit's build
rate, the write amplification and search p50/p95 with every segment a unit (tier 0)
and after the merges; then rebuilds every unit as IVFFlat and back as HNSW
(max_parallel_maintenance_workers 0), for the rates.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid

import numpy as np

from argus_embedder import db
from argus_embedder.commands import nearest
from argus_embedder.gateways import frames, index, queue, store
from argus_embedder.services import compactor

MODEL, DIM = "measure/768", 768


def clustered(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, DIM))
    points = centres[rng.integers(0, 200, count)] + 0.5 * rng.normal(size=(count, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def latency(conn, vectors, ids, label):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    times, recalls = [], []
    for row in rng.integers(0, len(vectors), 40):
        query = vectors[row] + 0.05 * rng.normal(size=DIM).astype(np.float32)
        query /= np.linalg.norm(query)
        started = time.perf_counter()
        hits = nearest.frames(conn, MODEL, query, limit=10)
        times.append((time.perf_counter() - started) * 1000)
        exact = {ids[i] for i in np.argsort(-(vectors @ query))[:10]}
        recalls.append(len(exact & {hit.frame_id for hit in hits}) / 10)
    live = [u for u in index.units(conn, MODEL) if u.state == "live"]
    p95 = statistics.quantiles(times, n=20)[18]
    print(
        f"{label}: {len(live)} live units, search p50 {statistics.median(times):.1f} ms "
        f"p95 {p95:.1f} ms, recall@10 {np.mean(recalls):.3f}"
    )


def main() -> None:
    url = sys.argv[1]
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    segment = int(sys.argv[3]) if len(sys.argv) > 3 else 5_000
    db.migrate(url)
    with db.connect(url, autocommit=True) as conn:
        model = index.register(conn, MODEL, DIM, "hnsw", segment_rows=segment)
        frames.insert(conn, [frames.NewFrame("m", i, f"s3://b/{i}") for i in range(rows)])
        ids = [r["id"] for r in conn.execute("SELECT id FROM argus.frames ORDER BY id")]
        vectors = clustered(rows, 0)
        job = queue.Job(0, "m", MODEL, 1, 5, uuid.uuid4(), 0.0)
        index.Segments(model).ensure(conn, ids)
        started = time.perf_counter()
        for lo in range(0, rows, 5000):
            with conn.transaction():
                results = [
                    store.FrameResult(f, vector=v)
                    for f, v in zip(ids[lo : lo + 5000], vectors[lo : lo + 5000], strict=True)
                ]
                store._copy(conn, [store.JobWrite(job, results)], "measure")
        print(f"wrote {rows} rows in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        tier0 = index.build_sealed(conn, MODEL, quiet_seconds=0)
        print(f"tier 0: {len(tier0)} units in {time.perf_counter() - started:.1f}s")
        latency(conn, vectors, ids, "all segments as tier-0 units")
        while compactor.compact_once(conn, MODEL):
            pass
        built = index.units(conn, MODEL)
        for unit in built:
            if unit.rows and unit.build_seconds:
                print(
                    f"  tier {unit.tier} {unit.kind} {unit.rows} rows: "
                    f"{unit.rows / unit.build_seconds:,.0f} rows/s (copy + build)"
                )
        indexed = sum(u.rows or 0 for u in built)
        print(f"write amplification: {indexed / rows:.2f} rows indexed per row written")
        latency(conn, vectors, ids, "after compaction")
        for kind, workers in (("ivfflat", 0), ("hnsw", 0)):
            conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
            index.register(conn, MODEL, DIM, kind)
            started = time.perf_counter()
            while compactor.compact_once(conn, MODEL):
                pass
            took = time.perf_counter() - started
            live = [u for u in index.units(conn, MODEL) if u.state == "live"]
            total = sum(u.rows or 0 for u in live)
            print(
                f"rebuild as {kind}, parallel workers {workers}: {total} rows in {took:.1f}s "
                f"= {total / took:,.0f} rows/s"
            )
            latency(conn, vectors, ids, f"  {kind}")
            index.drop_retired(conn, MODEL, grace_seconds=0)


if __name__ == "__main__":
    main()
