"""`argus-embedder bench --quick --json` end to end: every DESIGN §7 figure is reported.

What the figures are worth is the bench's business (and too noisy to assert on 2 shared
cores); this test pins the contract: one JSON object on stdout, every key of the §7 table
under "figures", each a number, or null only for the peer-library comparison, with the
reason it could not run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from argus_embedder.bench import dataset, fairness, search_growth, status_growth, suite
from argus_embedder.pipeline import embedder, worker
from tests import support
from tests.conftest import PostgresServer, S3Endpoint, textured_jpeg

DESIGN_KEYS = {
    "e2e_over_model_only",
    "e2e_over_decode_ceiling",
    "e2e_over_naive",
    "small_jobs_over_large_job",
    "claims_over_peer",
    "vector_writes_per_second",
    "rss_growth_mb",
    "e2e_indexed_over_unindexed",
    "search_recall_at_10",
    "fair_start_wait_ratio",
    "search_p95_growth",
    "decode_speedup_over_stock",
    "status_growth",
    "gpu_e2e_frames_per_second",
}


# search_p95_growth HNSW-indexes 100,000 vectors even in --quick (DESIGN §7): that step
# took 150 s at load average 12 on 2 cores, where the whole quick run took 521 s.
@pytest.mark.timeout(900)
def test_quick_bench_reports_every_design_figure(postgres_server: PostgresServer) -> None:
    # A separate process: the bench runs its own servers, threads and models, and its
    # stdout must be exactly one JSON object.
    environment = {
        **os.environ,
        "ARGUS_DATABASE_URL": postgres_server.admin_url,
        "HF_HUB_OFFLINE": "1",
        "ARGUS_DEVICE": "cpu",
    }
    completed = subprocess.run(
        [sys.executable, "-m", "argus_embedder", "bench", "--quick", "--json"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout)

    figures = report["figures"]
    assert set(figures) == DESIGN_KEYS == set(suite.GOALS)
    for key, value in figures.items():
        if value is None and key == "gpu_e2e_frames_per_second":
            continue  # ARGUS_DEVICE=cpu: no CUDA device, so no figure (DESIGN §7)
        if value is None:
            assert key == "claims_over_peer", f"{key} is null"
            reason = report["context"]["peer"]["reason"]
            assert "pgqueuer" in reason, reason
            continue
        assert isinstance(value, int | float) and math.isfinite(value), (key, value)
    context = report["context"]
    assert context["plan"] == "quick"
    assert context["machine"]["cores"] >= 1
    assert context["base_model"]["dimension"] == 768
    assert context["durations_seconds"]["total"] > 0
    growth = context["measurements"]["search_growth"]
    assert growth["vectors"] == [10_000, 100_000] == growth["design_vectors"]
    assert isinstance(growth["compaction"], bool)
    for size in ("small", "large"):
        assert 0 <= growth[f"search_recall_at_10_{size}"] <= 1


def test_search_growth_measures_search_as_the_vectors_grow(database_url: str) -> None:
    """The figure's scenario on a tiny corpus: 1 then 5 segments of 200 ids, every vector
    written, every sealed segment indexed before search is timed, recall near exact."""
    result = search_growth.run(database_url, [200, 1000], segment_rows=200, queries=20)

    compaction = importlib.util.find_spec(search_growth.COMPACTOR) is not None
    assert result.maintenance.compaction is compaction
    small, large = result.checkpoints
    assert (small.vectors, large.vectors) == (200, 1000)
    assert small.segments == 1
    assert large.segments == 5 if not compaction else 1 <= large.segments <= 5
    for point in result.checkpoints:
        assert point.segments_indexed == point.segments, point
        assert point.recall_at_10 >= 0.95, point
        assert 0 < point.search_ms_p50 <= point.search_ms_p95, point
    # Five sealed segments indexed, by the indexer or (where it runs) the compactor's units.
    assert result.maintenance.segments_built + result.maintenance.merges >= 5
    growth = search_growth.p95_growth(result)
    assert math.isfinite(growth) and growth > 0
    with psycopg.connect(database_url) as connection:
        row: Any = connection.execute(
            "SELECT count(*), count(DISTINCT frame_id) FROM argus.frame_embeddings "
            "WHERE model = %s AND embedding IS NOT NULL",
            (search_growth.MODEL,),
        ).fetchone()
    assert row == (1000, 1000)


def test_search_growth_refuses_sizes_that_are_not_whole_segments(database_url: str) -> None:
    with pytest.raises(dataset.BenchError, match="multiple of 200"):
        search_growth.run(database_url, [200, 300], segment_rows=200)
    with pytest.raises(dataset.BenchError, match="ascend"):
        search_growth.run(database_url, [400, 200], segment_rows=200)


def test_fairness_figure_comes_from_a_real_worker(
    conn: psycopg.Connection[Any], database_url: str, s3: S3Endpoint, tiny_siglip_dir: Path
) -> None:
    """fair_start_wait_ratio, small: a newcomer behind 40 jobs starts long before they end."""
    tiny = embedder.load_embedder(str(tiny_siglip_dir), "cpu", batch_size=2)
    uris = [s3.put(f"fair/{i}.jpg", textured_jpeg(i)) for i in range(4)]
    config = support.worker_settings(database_url, s3.bucket, s3.url, tiny.model, batch_size=2)
    result = fairness.run(
        database_url,
        uris,
        lambda: worker.Worker(config, database_url, tiny),
        model=tiny.model,
        frames_per_job=4,
        backlog=40,
        settle=2,
    )
    assert math.isfinite(result.ratio) and result.ratio > 0
    assert result.ratio == pytest.approx(result.start_wait_seconds / result.backlog_job_seconds)
    # First in, first out would have run the whole backlog first.
    assert result.backlog_jobs_finished < 40
    assert result.claimed_while_waiting <= 2
    left = conn.execute(
        "SELECT count(*) AS n FROM argus.embedding_jobs WHERE status IN ('queued', 'running')"
    ).fetchone()
    assert left is not None and left["n"] == 0  # the rest of the backlog is cancelled


def test_status_growth_times_status_over_two_databases(postgres_server: PostgresServer) -> None:
    """At a tiny scale: both databases hold what they should, status --json runs over
    each as its own process, and the figure is the ratio of the two median walls."""
    result = status_growth.run(postgres_server.admin_url, [300, 3000], [20, 200], rounds=1)
    small, large = result.sizes
    assert (small.frames, large.frames, small.queued, large.queued) == (300, 3000, 20, 200)
    assert len(small.status_seconds) == len(large.status_seconds) == 1
    assert result.growth == pytest.approx(large.status_seconds[0] / small.status_seconds[0])
    assert result.growth > 0 and result.above_startup_growth > 0
    assert small.estimated == large.estimated == []  # this small, everything is exact
    with psycopg.connect(postgres_server.admin_url) as admin:
        left = admin.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'argus_bench_status%%'"
        ).fetchone()
    assert left == (0,)  # both dropped
