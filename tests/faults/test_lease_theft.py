"""Scenario 6: lease theft. A worker paused (SIGSTOP) past its lease loses the job to
another; resumed (SIGCONT), its writes are fenced out and it abandons the job cleanly."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any

import psycopg
import pytest

from argus_embedder import db, settings
from argus_embedder.pipeline import embedder, worker
from tests import support
from tests.conftest import S3Endpoint, textured_jpeg
from tests.faults import harness, invariants
from tests.faults.conftest import run_worker, scaled

LEASE = "2"


def running_worker(connection: psycopg.Connection[Any], job_id: int) -> str | None:
    job = support.job(connection, job_id)
    return job["worker_id"] if job["status"] == "running" else None


def rows_by(connection: psycopg.Connection[Any], writer: str) -> int:
    row = connection.execute(
        "SELECT count(*) AS n FROM faults.writes WHERE writer = %s", (writer,)
    ).fetchone()
    return int(row["n"]) if row else 0


def pause_outside_a_transaction(connection: psycopg.Connection[Any], victim: harness.Daemon) -> int:
    """SIGSTOP the victim at a moment none of its sessions has a transaction open, and
    return how many pauses landed inside one first. Such a pause pins the job row (the
    bug test_worker_frozen_inside_its_write_transaction_does_not_pin_the_job shows
    deterministically); this scenario is about the fence, so it pauses again."""
    for inside in range(50):
        victim.signal(signal.SIGSTOP)
        time.sleep(0.1)  # statements already sent finish server-side
        row = connection.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = %s "
            "AND state <> 'idle'",
            (victim.name,),
        ).fetchone()
        if row is not None and row["n"] == 0:
            return inside
        victim.signal(signal.SIGCONT)
        time.sleep(0.05 * (inside + 1))
    raise AssertionError("never caught the victim outside a transaction")


def steal_once(
    connection: psycopg.Connection[Any], s3: S3Endpoint, fleet: harness.Fleet, run: int
) -> dict[str, Any]:
    frames = 160
    uris = [s3.put(f"theft{run}/{i}.jpg", textured_jpeg(i, (640, 360))) for i in range(12)]
    job_id = support.add_video(connection, f"theft-{run}", [uris[i % 12] for i in range(frames)])
    assert job_id is not None
    victim = fleet.start(name=f"victim{run}", ARGUS_LEASE_SECONDS=LEASE).wait_ready()
    harness.wait_for(
        lambda: support.job(connection, job_id)["frames_done"] >= 8, 60, "the victim's progress"
    )
    retried_pauses = pause_outside_a_transaction(connection, victim)
    paused = time.monotonic()
    done_when_paused = support.job(connection, job_id)["frames_done"]
    thief = fleet.start(name=f"thief{run}", ARGUS_LEASE_SECONDS=LEASE)
    try:
        harness.wait_for(
            lambda: running_worker(connection, job_id) == thief.name, 60, "the thief's reclaim"
        )
    except AssertionError as error:
        raise AssertionError(f"{error}; sessions: {invariants.activity(connection)}") from None
    stolen_after = time.monotonic() - paused
    harness.wait_for(
        lambda: support.job(connection, job_id)["frames_done"] >= done_when_paused + 8,
        60,
        "the thief's progress",
    )
    victim_rows = rows_by(connection, victim.name)
    victim.signal(signal.SIGCONT)  # while the thief is still mid-job
    still_running = support.job(connection, job_id)["status"] == "running"
    harness.wait_for(
        lambda: support.job(connection, job_id)["status"] == "succeeded", 90, "the thief to finish"
    )
    harness.wait_for(
        lambda: victim.metric("argus_embedder_jobs_completed_total", outcome="lease_lost") >= 1,
        30,
        "the victim to give the job up",
    )
    job = support.job(connection, job_id)
    assert job["attempts"] == 2 and job["errors"][0]["error"] == "lease expired"
    assert job["frames_done"] == job["frames_total"] == frames
    assert rows_by(connection, victim.name) == victim_rows  # nothing after the theft
    assert victim.alive() and victim.get("/livez")[0] == 200, victim.log()[-3000:]
    for daemon in (victim, thief):  # the next run starts with a fresh pair
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.log()[-3000:]
    return {
        "stolen_after_s": round(stolen_after, 1),
        "victim_resumed_mid_job": still_running,
        "victim_rows_before_pause": victim_rows,
        "pauses_inside_a_transaction": retried_pauses,
    }


def test_paused_worker_loses_its_lease_and_writes_nothing_after(
    audited: psycopg.Connection[Any], s3: S3Endpoint, fleet: harness.Fleet
) -> None:
    details = steal_once(audited, s3, fleet, 0)
    figures = invariants.check_invariants(audited)
    assert figures.stale_writes == 0 and figures.duplicated == 0
    invariants.report(figures, "lease-theft", **details)


@pytest.mark.slow
def test_lease_theft_repeated(
    audited: psycopg.Connection[Any], s3: S3Endpoint, fleet: harness.Fleet
) -> None:
    runs = [steal_once(audited, s3, fleet, run) for run in range(scaled(5, 2))]
    figures = invariants.check_invariants(audited)
    invariants.report(
        figures,
        "lease-theft",
        runs=len(runs),
        stolen_after_s=[r["stolen_after_s"] for r in runs],
        pauses_inside_a_transaction=sum(r["pauses_inside_a_transaction"] for r in runs),
    )


def test_worker_frozen_inside_its_write_transaction_does_not_pin_the_job(
    conn: psycopg.Connection[Any],
    s3: S3Endpoint,
    tiny_embedder: embedder.Embedder,
    database_url: str,
) -> None:
    """The worst moment to freeze: after the write's fence (the job row is locked) and
    before COMMIT. The frozen worker is a real Worker's pool connection doing the first
    statement of store.write; then it stops, as a SIGSTOPped process would. Another
    worker (the real loop, in this process) must get the job once the lease is over."""
    job_id = support.add_video(conn, "frozen", [s3.put("f/0.jpg", textured_jpeg(0))])
    assert job_id is not None
    config = settings.load(
        env={},
        database_url=database_url,
        model=tiny_embedder.model,
        device="cpu",
        metrics_port="0",
        lease_seconds="1",
        worker_id="frozen",
    )
    with worker.Worker(config, database_url, tiny_embedder) as frozen:
        with frozen.pool.connection() as connection:
            (job,) = frozen.queue.claim(connection)
        holder = frozen.pool.getconn()
        try:
            holder.execute("BEGIN")
            holder.execute(
                db.queries()["record_progress"],
                {
                    "job_ids": [job.id],
                    "lease_tokens": [job.lease_token],
                    "done": [0],
                    "failed": [0],
                    "lease_seconds": 1,
                },
            )
            run_worker(
                database_url,
                tiny_embedder,
                bucket=s3.bucket,
                endpoint=s3.url,
                worker_id="thief",
                until=lambda: support.job(conn, job_id)["status"] == "succeeded",
                timeout=8,
            )
        finally:
            with contextlib.suppress(psycopg.Error):
                holder.rollback()
            frozen.pool.putconn(holder)
