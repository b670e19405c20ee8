"""Scenario 9: load. Four daemons drain a backlog of small jobs; claim latency and
duplicates are reported from the database."""

from __future__ import annotations

import itertools
import time
from typing import Any

import psycopg
import pytest

from tests.conftest import S3Endpoint
from tests.faults import harness, invariants
from tests.faults.conftest import add_videos, all_final, scaled


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def drain_backlog(
    connection: psycopg.Connection[Any],
    s3: S3Endpoint,
    fleet: harness.Fleet,
    *,
    workers: int,
    jobs: int,
    frames: int,
    timeout: float,
) -> None:
    # The model is not registered yet (no `migrate --model`): the daemons starting
    # together race to register it, and exactly one registration must come out.
    invariants.install_write_audit(connection)
    for _ in range(workers):
        fleet.start(ARGUS_LEASE_SECONDS="30", ARGUS_BATCH_SIZE="16")
    for daemon in fleet.daemons:
        daemon.wait_ready()
    models = connection.execute("SELECT model FROM argus.models").fetchall()
    assert [row["model"] for row in models] == [fleet.base_env["ARGUS_MODEL"]]
    started = time.monotonic()
    add_videos(connection, s3, jobs, frames)  # the backlog lands while the fleet waits
    harness.wait_for(lambda: all_final(connection), timeout, "the backlog to drain", step=0.2)
    seconds = time.monotonic() - started
    figures = invariants.check_invariants(connection, daemons=fleet.daemons)
    assert figures.statuses == {"succeeded": jobs}
    assert figures.embedded == jobs * frames and figures.duplicated == 0
    rows = connection.execute(
        "SELECT worker_id, started_at, finished_at, "
        "extract(epoch FROM started_at - greatest(run_at, created_at)) AS wait "
        "FROM argus.embedding_jobs ORDER BY worker_id, started_at"
    ).fetchall()
    waits = [float(row["wait"]) for row in rows]
    # Claim latency as a worker sees it: from finishing one job to starting its next.
    gaps = [
        max(0.0, (later["started_at"] - earlier["finished_at"]).total_seconds())
        for earlier, later in itertools.pairwise(rows)
        if earlier["worker_id"] == later["worker_id"]
    ]
    per_worker = {row["worker_id"] for row in rows}
    claimed = sum(d.metric("argus_embedder_jobs_claimed_total") for d in fleet.daemons)
    assert claimed == jobs  # no job claimed twice
    assert len(per_worker) == workers  # every daemon took its share
    fleet.drain()
    invariants.report(
        figures,
        "load",
        workers=workers,
        seconds=round(seconds, 1),
        jobs_per_second=round(jobs / seconds, 1),
        frames_per_second=round(jobs * frames / seconds),
        queue_wait_p50_s=round(percentile(waits, 0.50), 3),
        queue_wait_p99_s=round(percentile(waits, 0.99), 3),
        claim_gap_p50_ms=round(percentile(gaps, 0.50) * 1000),
        claim_gap_p99_ms=round(percentile(gaps, 0.99) * 1000),
    )


def test_four_workers_drain_fifty_jobs(
    conn: psycopg.Connection[Any], s3: S3Endpoint, fleet: harness.Fleet
) -> None:
    drain_backlog(conn, s3, fleet, workers=4, jobs=50, frames=10, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_four_workers_drain_five_hundred_jobs(
    conn: psycopg.Connection[Any], s3: S3Endpoint, fleet: harness.Fleet
) -> None:
    drain_backlog(conn, s3, fleet, workers=4, jobs=scaled(500, 50), frames=10, timeout=600)
