"""The segmented vector index: writes stay unindexed, sealed segments get a bulk-indexed
search unit, search merges the units' ANN scans with an exact scan of what no unit
covers yet."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import numpy as np
import psycopg
import pytest

from argus_embedder.commands import nearest
from argus_embedder.gateways import index, queue, store
from tests import support

MODEL = "test/clustered"
DIMENSION = 64


def clustered(count: int, *, seed: int = 0, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIMENSION))
    points = centres[rng.integers(0, clusters, count)] + 0.3 * rng.normal(size=(count, DIMENSION))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def fake_job(model: str = MODEL) -> queue.Job:
    return queue.Job(
        id=0,
        video_id="v",
        model=model,
        attempts=1,
        max_attempts=5,
        lease_token=uuid.uuid4(),
        queue_wait_seconds=0.0,
    )


def write_vectors(
    conn: psycopg.Connection[Any], model: index.ModelInfo, frame_ids: list[int], vectors: np.ndarray
) -> None:
    """Rows straight through the store's COPY (no job: the fence needs none here)."""
    index.Segments(model).ensure(conn, frame_ids)
    with conn.transaction():
        store._copy(
            conn,
            [
                store.JobWrite(
                    fake_job(model.model),
                    [
                        store.FrameResult(f, vector=v)
                        for f, v in zip(frame_ids, vectors, strict=True)
                    ],
                )
            ],
            "test",
        )


def add_frames(conn: psycopg.Connection[Any], count: int, video: str = "v") -> list[int]:
    support.add_video(conn, video, [f"s3://b/{video}/{i}" for i in range(count)], enqueue=False)
    return [
        row["id"]
        for row in conn.execute(
            "SELECT id FROM argus.frames WHERE video_id = %s ORDER BY id", (video,)
        )
    ]


def plan(conn: psycopg.Connection[Any], table: str, query: np.ndarray) -> str:
    rows = conn.execute(
        f"EXPLAIN SELECT frame_id FROM argus.{table} "
        f"ORDER BY embedding <=> %s::halfvec({DIMENSION}) LIMIT 10",
        (query,),
    )
    return "\n".join(row["QUERY PLAN"] for row in rows)


def test_sealed_segments_get_a_bulk_index_and_search_sees_everything(
    conn: psycopg.Connection[Any],
) -> None:
    model = index.register(conn, MODEL, DIMENSION, "hnsw", segment_rows=3000)
    frame_ids = add_frames(conn, 7000)  # ids 1..7000: segments [0,3k) [3k,6k) [6k,9k)
    vectors = clustered(7000)
    write_vectors(conn, model, frame_ids, vectors)

    built = index.build_sealed(conn, MODEL)
    assert len(built) == 2  # the third segment's frame range is still open
    assert index.build_sealed(conn, MODEL) == []  # idempotent
    report = conn.execute(
        "SELECT lower_bound, index_name IS NOT NULL AS indexed FROM argus.segments "
        "WHERE model = %s ORDER BY lower_bound",
        (MODEL,),
    ).fetchall()
    assert [(r["lower_bound"], r["indexed"]) for r in report] == [
        (0, True),
        (3000, True),
        (6000, False),
    ]

    live = [unit for unit in index.units(conn, MODEL) if unit.state == "live"]
    assert [(unit.lower_bound, unit.upper_bound, unit.rows) for unit in live] == [
        (0, 3000, 2999),  # frame ids start at 1
        (3000, 6000, 3000),
    ]
    assert [unit.table_name for unit in live] == built
    for unit in live:  # each unit is searched through its own ANN index
        explained = plan(conn, unit.table_name, vectors[0])
        assert "Index Scan using" in explained and "hnsw" in explained, explained
    # No ANN index on the segments themselves: writes and stragglers never maintain one.
    assert all(table in built for table, _ in ann_indexes(conn))

    # A vector committed into the growing segment is found at once.
    fresh = add_frames(conn, 1, video="late")
    write_vectors(conn, model, fresh, vectors[7:8])
    hits = nearest.frames(conn, MODEL, vectors[7], limit=2)
    assert {hit.frame_id for hit in hits} == {frame_ids[7], fresh[0]}
    assert hits[0].score == pytest.approx(1.0, abs=2e-3)


def test_filters_still_return_the_limit_through_iterative_scans(
    conn: psycopg.Connection[Any],
) -> None:
    model = index.register(conn, MODEL, DIMENSION, "hnsw", segment_rows=300)
    ids = []
    for video in range(20):
        ids += add_frames(conn, 30, video=f"video-{video}")
    vectors = clustered(len(ids), seed=1)
    write_vectors(conn, model, ids, vectors)
    assert index.build_sealed(conn, MODEL)
    hits = nearest.frames(conn, MODEL, vectors[0], limit=25, video_id="video-13")
    assert len(hits) == 25
    assert {hit.video_id for hit in hits} == {"video-13"}


@pytest.mark.parametrize("kind", ["hnsw", "ivfflat"])
def test_recall_at_10_against_exact_search(conn: psycopg.Connection[Any], kind: str) -> None:
    model = index.register(conn, MODEL, DIMENSION, kind, segment_rows=2000)
    ids = add_frames(conn, 5000)
    vectors = clustered(5000, seed=2)
    write_vectors(conn, model, ids, vectors)
    assert len(index.build_sealed(conn, MODEL)) == 2  # 4000 indexed, 1000 exact
    rng = np.random.default_rng(3)
    recalls = []
    for query_row in rng.integers(0, 5000, 20):
        query = vectors[query_row] + 0.05 * rng.normal(size=DIMENSION).astype(np.float32)
        query /= np.linalg.norm(query)
        exact = {ids[i] for i in np.argsort(-(vectors @ query))[:10]}
        found = {hit.frame_id for hit in nearest.frames(conn, MODEL, query, limit=10)}
        recalls.append(len(exact & found) / 10)
    print(f"{kind} recall@10 = {np.mean(recalls):.3f}")
    assert np.mean(recalls) >= 0.95


def test_changing_the_kind_rebuilds_and_none_drops(conn: psycopg.Connection[Any]) -> None:
    model = index.register(conn, MODEL, DIMENSION, "hnsw", segment_rows=100)
    ids = add_frames(conn, 250)
    write_vectors(conn, model, ids, clustered(250))
    assert len(index.build_sealed(conn, MODEL)) == 2
    index.register(conn, MODEL, DIMENSION, "ivfflat")
    built = index.build_sealed(conn, MODEL)
    # Each hnsw unit rebuilt as ivfflat, then the two folded into one (ivfflat grows in place).
    assert len(built) == 3 and all(name.endswith("_ivfflat") for name in built)
    live = [
        (u.kind, u.lower_bound, u.upper_bound)
        for u in index.units(conn, MODEL)
        if u.state == "live"
    ]
    assert live == [("ivfflat", 0, 200)]
    index.register(conn, MODEL, DIMENSION, "none")
    assert index.build_sealed(conn, MODEL) == []
    left = conn.execute(
        "SELECT count(*) AS n FROM pg_indexes WHERE schemaname = 'argus' "
        "AND (indexdef LIKE '%%hnsw%%' OR indexdef LIKE '%%ivfflat%%')"
    ).fetchone()
    assert left["n"] == 0


def test_dimension_mismatch_is_a_config_error(conn: psycopg.Connection[Any]) -> None:
    from argus_embedder import errors

    index.register(conn, MODEL, DIMENSION)
    with pytest.raises(errors.ConfigError, match="dimension"):
        index.register(conn, MODEL, DIMENSION + 1)


def test_one_indexer_at_a_time(database_url: str, conn: psycopg.Connection[Any]) -> None:
    from argus_embedder import db

    model = index.register(conn, MODEL, DIMENSION, "hnsw", segment_rows=100)
    ids = add_frames(conn, 150)
    write_vectors(conn, model, ids, clustered(150))
    with db.connect(database_url) as other:  # a transaction: another daemon building
        # the lock each unit build takes (sql/migrations/0007)
        other.execute("SELECT pg_advisory_xact_lock(hashtext('argus-embedder:indexer'))")
        assert index.build_sealed(conn, MODEL) == []
        other.rollback()
    assert len(index.build_sealed(conn, MODEL)) == 1


@pytest.mark.parametrize("limit", [600, 1000])
def test_regression_bug7_a_limit_above_500_still_searches(
    conn: psycopg.Connection[Any], limit: int
) -> None:
    """Regression (issue 16 bug 7): search set hnsw.ef_search to 2 x limit, past pgvector's
    maximum of 1000, so every limit from 501 to 1000 (the CLI's maximum) failed."""
    model = index.register(conn, MODEL, DIMENSION, "hnsw", segment_rows=400)
    ids = add_frames(conn, 1200)
    vectors = clustered(1200, seed=4)
    write_vectors(conn, model, ids, vectors)
    assert len(index.build_sealed(conn, MODEL)) == 3  # every vector behind an HNSW index
    hits = nearest.frames(conn, MODEL, vectors[0], limit=limit)
    assert len(hits) == limit  # iterative scans go past ef_search
    assert len({hit.frame_id for hit in hits}) == limit
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    exact = {ids[i] for i in np.argsort(-(vectors @ vectors[0]))[:limit]}
    assert len(exact & {hit.frame_id for hit in hits}) >= 0.95 * limit


def ann_indexes(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(table, index) of every HNSW or IVFFlat index in the schema."""
    rows = conn.execute(
        "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'argus' "
        "AND (indexdef LIKE '%%USING hnsw%%' OR indexdef LIKE '%%USING ivfflat%%') "
        "ORDER BY tablename, indexname"
    ).fetchall()
    return [(row["tablename"], row["indexname"]) for row in rows]


def test_regression_bug10_a_kind_change_during_a_build_leaves_no_orphan_index(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Regression (issue 16 bug 10): a kind change that ran while a build was inside its
    transaction must wait for it and leave no index of the old kind behind (with units:
    the unit built in the old kind is dropped, and rebuilt in the new one)."""
    import threading

    from argus_embedder import db

    model = index.register(conn, MODEL, DIMENSION, "hnsw", segment_rows=100)
    ids = add_frames(conn, 150)
    write_vectors(conn, model, ids, clustered(150))
    unit_id = index.next_unit(conn, MODEL, fanout=2, tier0_only=True)
    assert unit_id is not None
    with db.connect(database_url) as builder:  # a daemon's build, not committed yet
        filled = builder.execute(db.queries()["unit_fill"], {"unit_id": unit_id}).fetchone()
        assert filled is not None and filled["rows"] == 99
        changed = threading.Event()
        failure: list[BaseException] = []

        def change_kind() -> None:
            try:
                with db.connect(database_url, autocommit=True) as operator:
                    index.register(operator, MODEL, DIMENSION, "ivfflat")
            except BaseException as error:  # reported by the main thread
                failure.append(error)
            finally:
                changed.set()

        operator = threading.Thread(target=change_kind)
        operator.start()
        waited = not changed.wait(1.0)  # the kind change waits for the build
        builder.commit()
    operator.join(timeout=30)
    assert not failure, failure
    assert waited
    assert index.units(conn, MODEL) == []  # the unit built in the old kind went
    assert ann_indexes(conn) == []
    rebuilt = index.build_sealed(conn, MODEL)
    assert [name.rsplit("_", 1)[1] for name in rebuilt] == ["ivfflat"]
    assert [table for table, _ in ann_indexes(conn)] == rebuilt

    # An orphan left on a segment by an older version goes with the next
    # `migrate --model M --index K`.
    segment = conn.execute(
        "SELECT partition_name FROM argus.segments WHERE model = %s AND lower_bound = 0",
        (MODEL,),
    ).fetchone()
    assert segment is not None
    conn.execute(
        f"CREATE INDEX stray ON argus.{segment['partition_name']} "
        f"USING hnsw ((embedding::halfvec({DIMENSION})) halfvec_cosine_ops)"
    )
    index.register(conn, MODEL, DIMENSION, "ivfflat")
    assert [table for table, _ in ann_indexes(conn)] == rebuilt


def test_regression_bug11_segment_size_is_fixed_once_segments_exist(
    conn: psycopg.Connection[Any],
) -> None:
    """Regression (issue 16 bug 11): a new segment_rows applied to a model with segments
    made new segments overlap the existing ones, and every write into them failed."""
    from argus_embedder import errors

    model = index.register(conn, MODEL, DIMENSION, "hnsw", segment_rows=100)
    assert index.register(conn, MODEL, DIMENSION, segment_rows=300).segment_rows == 300
    model = index.register(conn, MODEL, DIMENSION, segment_rows=100)  # no segments yet
    write_vectors(conn, model, add_frames(conn, 10), clustered(10))
    with pytest.raises(errors.ConfigError, match="segment") as raised:
        index.register(conn, MODEL, DIMENSION, segment_rows=1000)
    assert isinstance(raised.value.__cause__, psycopg.errors.InvalidParameterValue)
    assert index.register(conn, MODEL, DIMENSION, "ivfflat", segment_rows=100).segment_rows == 100
    assert index.info(conn, MODEL) == dataclasses.replace(model, index_kind="ivfflat")
