"""Scenario 5: a poison frame, whose processing always crashes a process.

Every daemon of the fleet runs the real command line with one native failure added
(tests/faults/crashing_daemon.py): a segfault on one object, in the decoder or in the
model. A decoder crash kills a decode process only: the frame is found by re-running the
frames in flight one at a time, and becomes an error row; the job succeeds, no daemon
dies. A model crash kills the daemon: a supervisor restarts it as systemd's
Restart=on-failure does, and the poison job uses its attempts (each crash is one), ends
`failed` with its error history, while the other jobs all succeed.
"""

from __future__ import annotations

import datetime
import itertools
import signal
import sys
import time
from typing import Any

import psycopg

from argus_embedder.gateways import queue
from tests import support
from tests.conftest import S3Endpoint
from tests.faults import harness, invariants
from tests.faults.conftest import add_videos, all_final, small_jpeg
from tests.faults.crashing_daemon import POISON

CRASHING = [sys.executable, "-m", "tests.faults.crashing_daemon", "run"]
LEASE_SECONDS = 2.0


def add_poison_video(audited: psycopg.Connection[Any], s3: S3Endpoint) -> int:
    good = [s3.put(f"poison/{i}.jpg", small_jpeg(100 + i)) for i in range(5)]
    poison_uri = s3.put("poison/crash.jpg", POISON + b" this frame segfaults its process")
    poison_job = support.add_video(audited, "poison", [*good[:3], poison_uri, *good[3:]])
    assert poison_job is not None
    return poison_job


def test_a_frame_that_crashes_the_decoder_becomes_an_error_row(
    audited: psycopg.Connection[Any], s3: S3Endpoint, fleet: harness.Fleet
) -> None:
    normal = add_videos(audited, s3, 8, 12)
    poison_job = add_poison_video(audited, s3)
    audited.execute("UPDATE argus.embedding_jobs SET priority = 10 WHERE id = %s", (poison_job,))
    daemons = [fleet.start(command=CRASHING) for _ in range(2)]
    harness.wait_for(lambda: all_final(audited), 120, "every job to finish", step=0.2)

    job = support.job(audited, poison_job)
    figures = invariants.check_invariants(audited, daemons=daemons)
    assert all(daemon.alive() for daemon in daemons), fleet.logs()
    assert figures.statuses == {"succeeded": len(normal) + 1}
    assert (job["attempts"], job["frames_done"], job["frames_failed"]) == (1, 6, 1), job
    error = audited.execute(
        "SELECT e.error FROM argus.frame_embeddings e JOIN argus.frames f ON f.id = e.frame_id "
        "WHERE e.error IS NOT NULL"
    ).fetchall()
    assert len(error) == 1 and "killed the decode process" in error[0]["error"]
    retried = invariants.count(
        audited, "SELECT count(*) FROM argus.embedding_jobs WHERE attempts > 1"
    )
    assert retried == 0
    fleet.drain()
    invariants.report(figures, "poison-frame-decoder", daemons_died=0, jobs_retried=retried)


def test_poison_job_fails_after_max_attempts_and_spares_the_others(
    audited: psycopg.Connection[Any], s3: S3Endpoint, fleet: harness.Fleet
) -> None:
    normal = add_videos(audited, s3, 8, 12)
    poison_job = add_poison_video(audited, s3)
    # Claimed first, while the other jobs run: the worst moment for a crash.
    audited.execute(
        "UPDATE argus.embedding_jobs SET max_attempts = 3, priority = 10 WHERE id = %s",
        (poison_job,),
    )
    env = {"ARGUS_LEASE_SECONDS": str(LEASE_SECONDS), "TEST_CRASH_IN": "model"}
    for _ in range(2):
        fleet.start(command=CRASHING, **env)

    crashes: list[int] = []
    replaced: set[int] = set()
    deadline = time.monotonic() + 150
    while not all_final(audited) and time.monotonic() < deadline:
        for daemon in list(fleet.daemons):
            if not daemon.alive() and daemon.pid not in replaced:
                replaced.add(daemon.pid)
                crashes.append(daemon.process.returncode)
                fleet.start(command=CRASHING, **env)  # systemd: Restart=on-failure
        time.sleep(0.2)
    assert all_final(audited), fleet.logs()

    job = support.job(audited, poison_job)
    figures = invariants.check_invariants(audited, daemons=fleet.live())
    assert job["status"] == "failed", job
    assert job["attempts"] == job["max_attempts"] == 3
    assert [entry["error"] for entry in job["errors"]] == ["lease expired"] * 3
    assert "lease expired" in job["last_error"]
    assert crashes == [-signal.SIGSEGV] * 3, (crashes, fleet.logs())
    assert figures.statuses == {"succeeded": len(normal), "failed": 1}
    attempts_at = [datetime.datetime.fromisoformat(entry["at"]) for entry in job["errors"]]
    gaps = [
        round((later - earlier).total_seconds(), 1)
        for earlier, later in itertools.pairwise(attempts_at)
    ]
    collateral = invariants.count(
        audited,
        "SELECT count(*) FROM argus.embedding_jobs WHERE id <> %s AND attempts > 1",
        (poison_job,),
    )
    fleet.drain()
    invariants.report(
        figures,
        "poison-job",
        crashes=len(crashes),
        poison_attempts=job["attempts"],
        seconds_between_attempts=gaps,
        innocent_jobs_reclaimed=collateral,
    )


def test_a_crashed_jobs_next_attempt_backs_off(conn: psycopg.Connection[Any]) -> None:
    """Queue-level: each claimer dies at once (it never renews); the next claim may come
    only after the lease plus a backoff that grows with the attempts."""
    support.add_video(conn, "crashy", ["a.jpg"])
    conn.execute("UPDATE argus.embedding_jobs SET max_attempts = 10")
    waits: list[float] = []
    for attempt in range(1, 5):
        taker = queue.Queue(model="m", worker_id=f"doomed-{attempt}", lease_seconds=0.5)
        started = time.monotonic()
        while not taker.claim(conn):
            assert time.monotonic() - started < 60, f"attempt {attempt} never claimed"
            time.sleep(0.05)
        if attempt > 1:
            waits.append(time.monotonic() - started)
    assert waits[1] > waits[0] * 1.5 and waits[2] > waits[1] * 1.5, waits
