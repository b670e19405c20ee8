"""`status` against a real PostgreSQL and S3: rates, ETAs, devices, coverage, --watch, gauges."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from argus_embedder import cli, metrics, settings
from argus_embedder.commands import status
from argus_embedder.gateways import counting, index, queue, store
from argus_embedder.pipeline import embedder, worker
from argus_embedder.services import queue_gauges, registry
from tests import support
from tests.conftest import S3Endpoint, textured_jpeg


@pytest.fixture(scope="module")
def tiny_embedder(tiny_siglip_dir: Path) -> embedder.Embedder:
    return embedder.load_embedder(str(tiny_siglip_dir), "cpu", batch_size=8)


def test_status_json_gives_sane_rates_and_etas(
    conn: psycopg.Connection[Any],
    database_url: str,
    s3: S3Endpoint,
    tiny_embedder: embedder.Embedder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tiny_embedder.model
    # Video A, embedded for real: the fleet's recent rate.
    uris = [s3.put(f"a/{i}.jpg", textured_jpeg(i)) for i in range(24)]
    support.add_video(conn, "a", uris)
    config = settings.load(
        env={},
        database_url=database_url,
        model=model,
        device="cpu",
        s3_bucket=s3.bucket,
        s3_endpoint_url=s3.url,
        metrics_port="0",
    )
    with worker.Worker(config, database_url, tiny_embedder) as loop:
        loop.run(burst=True)
    # Video B waits in the queue (no model named: the configured one).
    support.add_video(conn, "b", [f"s3://{s3.bucket}/b/{i}.jpg" for i in range(40)])
    # Video C runs on another worker, 10 of its 30 frames written.
    support.add_video(conn, "c", [f"s3://{s3.bucket}/c/{i}.jpg" for i in range(30)], priority=5)
    claimer = queue.Queue(model=model, worker_id="gpu-host:0", lease_seconds=60)
    [job] = claimer.claim(conn)
    assert job.video_id == "c"
    claimer.missing_frames(conn, [job])  # what a worker does right after its claim
    registry.task("gpu-host:0", model=model, device="cuda:0", version="test").run(
        conn, lambda: False
    )
    frame_ids = [
        row["id"]
        for row in conn.execute(
            "SELECT id FROM argus.frames WHERE video_id = 'c' ORDER BY frame_index LIMIT 10"
        )
    ]
    info = index.info(conn, model)
    assert info is not None
    index.Segments(info).ensure(conn, frame_ids)
    vector = np.ones(info.dimension, dtype=np.float32) / np.sqrt(info.dimension)
    results = [store.FrameResult(frame_id, vector=vector) for frame_id in frame_ids]
    store.write(conn, [store.JobWrite(job, results)], preprocessing="test", lease_seconds=60)

    monkeypatch.setenv("ARGUS_DATABASE_URL", database_url)
    monkeypatch.setenv("ARGUS_MODEL", model)
    assert cli.main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    backlog = report["queue"]
    assert backlog["frames_waiting"] == 40 + 20
    assert backlog["frames_per_second"] > 0
    assert 0 < backlog["eta_seconds"] < 3600
    assert backlog["eta_seconds"] == pytest.approx(60 / backlog["frames_per_second"])

    [running] = report["running"]
    assert (running["video_id"], running["frames_done"], running["frames_total"]) == ("c", 10, 30)
    assert running["device"] == "cuda:0"
    assert running["frames_per_second"] > 0
    assert 0 < running["eta_seconds"] < 3600
    assert running["eta_seconds"] == pytest.approx(20 / running["frames_per_second"])

    [coverage] = report["coverage"]
    assert coverage["model"] == model and coverage["configured"]
    assert (coverage["frames"], coverage["with_row"], coverage["missing"]) == (94, 34, 60)
    assert coverage["coverage"] == pytest.approx(34 / 94)
    assert report["jobs"]["queued"] == 1 and report["jobs"]["running"] == 1

    assert cli.main(["status"]) == 0
    text = capsys.readouterr().out
    assert "60 frame(s) waiting" in text
    assert "(cuda:0)" in text and "10/30 frames" in text
    assert f"{model} (configured): 34/94 frames" in text


def test_an_idle_fleet_gives_no_eta_rather_than_a_wrong_one(
    conn: psycopg.Connection[Any],
) -> None:
    support.add_video(conn, "waiting", ["x", "y", "z"])
    report = status.collect(conn, model="test/model")
    assert report["queue"]["frames_waiting"] == 3
    assert report["queue"]["frames_per_second"] == 0
    assert report["queue"]["eta_seconds"] is None
    assert "ETA unknown" in status.render(report)


def test_a_huge_queue_is_counted_on_a_sample(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(5):
        support.add_video(conn, f"backlog-{n}", ["x", "y", "z"])
    assert queue.frames_waiting(conn, "test/model", queued=5) == counting.Count(15)
    # 2 of 5 videos counted, scaled up
    assert queue.frames_waiting(conn, "test/model", queued=5, sample=2) == counting.Count(15, True)
    monkeypatch.setattr(queue, "WAITING_SAMPLE", 2)
    assert status.render(status.collect(conn)).count("~15 frame(s) waiting") == 1


def test_status_watch_refreshes_until_ctrl_c(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    support.add_video(conn, "v", ["x"])
    # A shell's background job (`cmd &`, as CI may run the suite) ignores SIGINT, and a
    # child inherits an ignored signal: give it SIGINT's default, as a terminal would.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "argus_embedder",
                "status",
                "--watch",
                "--interval",
                "0.2",
                "--json",
            ],
            env={**os.environ, "ARGUS_DATABASE_URL": database_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, inherited)
    try:
        assert child.stdout is not None
        first = json.loads(child.stdout.readline())  # one JSON object per refresh
        second = json.loads(child.stdout.readline())
        assert first["jobs"]["queued"] == second["jobs"]["queued"] == 1
        conn.execute("UPDATE argus.embedding_jobs SET status = 'cancelled'")
        deadline = time.monotonic() + 10
        while json.loads(child.stdout.readline())["jobs"]["queued"] != 0:
            assert time.monotonic() < deadline
        child.send_signal(signal.SIGINT)
        try:
            _, err = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
            pytest.fail(
                f"status --watch outlived SIGINT by 30 s, {out.count(chr(10))} refreshes "
                f"after it; stderr: {err[-2000:]!r}"
            )
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()  # reaped here, not by a later test's garbage collection
    assert child.returncode == 0, err
    assert "Traceback" not in err


def test_queue_gauges_come_from_one_snapshot_per_interval(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    """Two daemons' exporters: one computes the snapshot, both export the same numbers."""
    support.add_video(conn, "v1", ["a", "b", "c"])
    support.add_video(conn, "v2", ["a", "b"])
    first, second = (
        queue_gauges.task(settings.load(env={}, model="test/model", worker_id=name))
        for name in ("daemon-a", "daemon-b")
    )
    first.run(conn, lambda: False)
    assert metrics.value("argus_embedder_queue_jobs", state="queued") == 2
    assert metrics.value("argus_embedder_queue_frames_waiting") == 5
    assert metrics.value("argus_embedder_queue_oldest_queued_age_seconds") >= 0

    support.add_video(conn, "v3", ["a"])
    second.run(conn, lambda: False)  # within the interval: exports the stored snapshot
    assert metrics.value("argus_embedder_queue_jobs", state="queued") == 2
    with psycopg.connect(database_url) as other:
        row = other.execute(
            "SELECT worker_id FROM argus.fleet_passes WHERE name = 'queue-stats'"
        ).fetchone()
    assert row == ("daemon-a",)


def test_status_shows_the_biggest_project_backlogs_not_every_project(
    conn: psycopg.Connection[Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 12 projects, project-NN with NN+1 frames waiting, and one video with no project.
    for n in range(12):
        support.add_video(conn, f"v{n}", [f"f{i}" for i in range(n + 1)], project_id=f"p{n:02d}")
    support.add_video(conn, "orphan", ["x"])
    conn.execute("INSERT INTO argus.projects VALUES ('p11', 4, 0)")
    monkeypatch.setenv("ARGUS_DATABASE_URL", database_url)
    assert cli.main(["status", "--json"]) == 0
    section = json.loads(capsys.readouterr().out)["projects"]
    assert [row["project_id"] for row in section["top"]] == [f"p{n:02d}" for n in range(11, 1, -1)]
    assert section["more"] == 3  # p01, p00 and the NULL project
    top = section["top"][0]
    assert (top["weight"], top["max_running"], top["queued"]) == (4, 0, 1)
    assert top["frames_waiting"] == 12

    assert cli.main(["status"]) == 0
    text = capsys.readouterr().out
    assert "projects (biggest backlog first):" in text
    assert "  p11: weight 4, paused (cap 0), 1 queued, 0 running, 12 frame(s) waiting" in text
    assert "p01" not in text
    assert "… and 3 more project(s): `argus-embedder project list`" in text


def _embed_video(
    conn: psycopg.Connection[Any], model: str, video_id: str, frames: int, *, failed: int = 0
) -> queue.Job:
    """A video whose job a claimer ran to the end: `frames` rows, the first `failed` errors."""
    support.add_video(conn, video_id, [f"s3://bucket/{video_id}/{i}.jpg" for i in range(frames)])
    claimer = queue.Queue(model=model, worker_id="gpu-host:0", lease_seconds=60)
    [job] = claimer.claim(conn)
    listed = claimer.missing_frames(conn, [job])[job.id]
    info = index.info(conn, model)
    assert info is not None
    index.Segments(info).ensure(conn, [frame.id for frame in listed])
    vector = np.ones(info.dimension, dtype=np.float32) / np.sqrt(info.dimension)
    results = [
        store.FrameResult(frame.id, error="broken")
        if n < failed
        else store.FrameResult(frame.id, vector=vector)
        for n, frame in enumerate(listed)
    ]
    store.write(conn, [store.JobWrite(job, results)], preprocessing="test", lease_seconds=60)
    assert claimer.complete(conn, job) is not None
    return job


def test_past_the_exact_limits_status_shows_estimates_and_says_so(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every table above the exact limit and the partial-index counts above their
    cap, figures are the planner's, marked in the JSON and with `~` in the text; counts
    within the cap stay exact (failed frames)."""
    model = "test/model"
    index.register(conn, model, 4)
    _embed_video(conn, model, "done", 20, failed=2)
    for n in range(4):
        support.add_video(conn, f"waiting-{n}", ["x", "y", "z"])
    conn.execute("ANALYZE")
    exact = status.collect(conn, model=model)
    assert not any(exact["jobs_estimated"].values())
    assert exact["jobs"]["queued"] == 4 and exact["jobs"]["succeeded"] == 1
    [covered] = exact["coverage"]
    assert (covered["frames"], covered["with_row"], covered["failed"]) == (32, 20, 2)
    assert not covered["estimated"] and not covered["failed_estimated"]

    monkeypatch.setattr(counting, "EXACT_ROWS", 0)
    monkeypatch.setattr(counting, "COUNT_CAP", 2)
    report = status.collect(conn, model=model)
    assert report["jobs_estimated"] == {
        "queued": True,  # 4 > the cap of 2
        "running": False,  # none: within the cap, exact
        "succeeded": True,
        "failed": True,
        "cancelled": True,
    }
    assert report["jobs"]["queued"] >= 3 and report["jobs"]["running"] == 0
    [covered] = report["coverage"]
    assert covered["estimated"] and covered["failed_estimated"] is False
    assert (covered["frames"], covered["with_row"], covered["failed"]) == (32, 20, 2)
    text = status.render(report)
    assert f"queued ~{report['jobs']['queued']}, running 0, succeeded ~" in text
    assert f"{model} (configured): ~20/~32 frames (~62.5%), 2 failed, ~12 missing" in text


def test_the_fleet_rate_is_over_the_window_it_names(conn: psycopg.Connection[Any]) -> None:
    """30 frames written 100 s ago, nothing since: 30 over the last 5 minutes is 0.1/s (not
    30 over the 100 s since the first of them, a span the label did not name)."""
    model = "test/model"
    index.register(conn, model, 4)
    _embed_video(conn, model, "done", 30)
    conn.execute(
        "UPDATE argus.frame_embeddings SET created_at = now() - interval '100 seconds' "
        "WHERE model = %s",
        (model,),
    )
    report = status.collect(conn, model=model)
    backlog = report["queue"]
    assert backlog["frames_per_second"] == pytest.approx(30 / status.FLEET_WINDOW_SECONDS, 0.05)
    assert backlog["frames_written"] == 30
    assert backlog["rate_window_seconds"] == pytest.approx(status.FLEET_WINDOW_SECONDS, abs=5)
    assert "fleet wrote 30 frame(s) in the last 5m 00s (0.1 frames/s)" in status.render(report)
