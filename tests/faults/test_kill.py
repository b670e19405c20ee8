"""Scenario 1: SIGKILL workers at random moments; every job still finishes exactly once."""

from __future__ import annotations

import signal
import time
from typing import Any

import psycopg
import pytest

from tests.conftest import S3Endpoint
from tests.faults import harness, invariants
from tests.faults.conftest import add_videos, all_final, scaled
from tests.faults.proxy import Fault, FaultProxy


def kill_busy_workers(
    connection: psycopg.Connection[Any],
    s3: S3Endpoint,
    proxy: FaultProxy,
    fleet: harness.Fleet,
    *,
    workers: int,
    kills: int,
    jobs: int,
    frames: int,
    timeout: float,
) -> invariants.Figures:
    """Run `workers` daemons over `jobs` jobs; `kills` times SIGKILL one that holds a job
    at a random moment and start a replacement (as systemd's Restart= would)."""
    # Every kill costs its job an attempt; "all finish" must not depend on which jobs
    # the dice pick, so each job can survive all of them.
    add_videos(connection, s3, jobs, frames, max_attempts=kills + 2)
    # 0.2 s of latency on every GET (S3 has tens of ms): the work then lasts long enough
    # for the kills to land mid-job on a fast machine too, without changing what is tested.
    proxy.inject(Fault("slow", times=10**9, delay=0.2))
    env = {"ARGUS_S3_ENDPOINT_URL": proxy.url}
    for _ in range(workers):
        fleet.start(**env)
    for daemon in fleet.live():
        daemon.wait_ready()
    started = time.monotonic()
    done_kills = 0
    deadline = time.monotonic() + timeout
    while done_kills < kills and time.monotonic() < deadline:
        time.sleep(fleet.rng.uniform(0.1, 0.5))
        busy = {
            row["worker_id"]
            for row in connection.execute(
                "SELECT worker_id FROM argus.embedding_jobs "
                "WHERE status = 'running' AND lease_expires_at > now()"
            )
        }
        victims = [d for d in fleet.live() if d.name in busy]
        if not victims:
            if all_final(connection):
                break  # the work ran out before the kills did: add none, report it
            continue
        victim = fleet.rng.choice(victims)
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        done_kills += 1
        fleet.start(**env)
    harness.wait_for(lambda: all_final(connection), timeout, "every job to finish", step=0.2)
    elapsed = time.monotonic() - started
    figures = invariants.check_invariants(connection, daemons=fleet.live())
    reclaimed = connection.execute(
        "SELECT count(*) AS n FROM argus.embedding_jobs WHERE attempts > 1"
    ).fetchone()
    assert reclaimed is not None
    assert figures.statuses == {"succeeded": jobs}, fleet.logs()
    assert figures.frames == figures.embedded == jobs * frames
    assert done_kills == kills, f"only {done_kills} of {kills} kills landed on a busy worker"
    assert reclaimed["n"] >= 1
    fleet.drain()
    invariants.report(
        figures,
        "sigkill",
        kills=done_kills,
        workers=workers,
        reclaimed_jobs=reclaimed["n"],
        seconds=round(elapsed, 1),
    )
    return figures


def test_sigkill_three_kills_across_fifteen_jobs(
    audited: psycopg.Connection[Any], s3: S3Endpoint, proxy: FaultProxy, fleet: harness.Fleet
) -> None:
    kill_busy_workers(
        audited, s3, proxy, fleet, workers=3, kills=3, jobs=15, frames=40, timeout=120
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_twenty_kills_across_a_hundred_jobs(
    audited: psycopg.Connection[Any], s3: S3Endpoint, proxy: FaultProxy, fleet: harness.Fleet
) -> None:
    kill_busy_workers(
        audited,
        s3,
        proxy,
        fleet,
        workers=3,
        kills=scaled(20, 3),
        jobs=scaled(100, 15),
        frames=40,
        timeout=600,
    )
