"""Least privilege (DESIGN §2): each role can do its job and nothing else.

Login roles are created per test (the `login` fixture, tests/support.login_role) and
granted exactly one of the NOLOGIN roles that `migrate` creates; the embedded server
trusts local connections, so a role name in the URL is enough to act as it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from argus_embedder import cli, db
from tests import support
from tests.conftest import S3Endpoint, textured_jpeg

Login = Callable[..., str]  # the `login` fixture of tests/conftest.py


def denied(url: str, statement: str, params: tuple[Any, ...] = ()) -> bool:
    """True when `statement` fails for lack of privilege (and changes nothing)."""
    with psycopg.connect(url, autocommit=True) as connection:
        try:
            connection.execute(statement.encode(), params)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def test_frame_stage_inserts_frames_and_jobs_and_nothing_else(
    conn: psycopg.Connection[Any], login: Login
) -> None:
    url = login("argus_frame_stage")
    with psycopg.connect(url, autocommit=True) as stage:
        stage.execute(
            "INSERT INTO argus.frames (video_id, project_id, frame_index, timestamp_ms, image_uri)"
            " VALUES ('v', 'p', 0, 0, 's3://b/0.jpg'), ('v', 'p', 1, 500, 's3://b/1.jpg')"
        )
        stage.execute(
            "INSERT INTO argus.embedding_jobs (video_id) VALUES ('v') ON CONFLICT DO NOTHING"
        )
        stage.execute(
            "INSERT INTO argus.embedding_jobs (video_id) VALUES ('v') ON CONFLICT DO NOTHING"
        )
        row = stage.execute(
            "SELECT argus.enqueue_embedding_job('w', model => NULL, priority => 3)"
        ).fetchone()
        assert row is not None and row[0] is not None
    jobs = conn.execute("SELECT video_id, status FROM argus.embedding_jobs ORDER BY id").fetchall()
    assert [(job["video_id"], job["status"]) for job in jobs] == [("v", "queued"), ("w", "queued")]

    assert denied(url, "SELECT * FROM argus.frame_embeddings")
    assert denied(url, "SELECT * FROM argus.embedding_jobs")
    assert denied(url, "UPDATE argus.embedding_jobs SET status = 'succeeded'")
    assert denied(url, "UPDATE argus.frames SET image_uri = 'x'")
    assert denied(url, "DELETE FROM argus.frames")
    assert denied(url, "DELETE FROM argus.embedding_jobs")
    assert denied(url, "TRUNCATE argus.frames")
    assert denied(
        url, "INSERT INTO argus.frame_embeddings (frame_id, model, error) VALUES (1, 'm', 'x')"
    )
    assert denied(url, "SELECT argus.ensure_model_index('m', 8, 'none')")
    assert denied(url, "CREATE TABLE argus.mine (id int)")


def test_frame_stage_resending_frames_idempotently(login: Login) -> None:
    """A frame stage that retries its inserts uses ON CONFLICT DO NOTHING on frames too."""
    url = login("argus_frame_stage")
    with psycopg.connect(url, autocommit=True) as stage:
        for _ in range(2):
            stage.execute(
                "INSERT INTO argus.frames (video_id, frame_index, image_uri) "
                "VALUES ('v', 0, 's3://b/0.jpg') ON CONFLICT DO NOTHING"
            )


def test_frame_stage_cannot_forge_job_state(login: Login) -> None:
    url = login("argus_frame_stage")
    assert denied(
        url,
        "INSERT INTO argus.embedding_jobs (video_id, status, lease_expires_at, lease_token) "
        "VALUES ('pinned', 'running', 'infinity', gen_random_uuid())",
    )


def test_reader_reads_and_searches_but_writes_nothing(
    conn: psycopg.Connection[Any], login: Login, tiny_siglip_dir: Path
) -> None:
    url = login("argus_reader")
    support.add_video(conn, "v", ["s3://b/0.jpg"])
    with psycopg.connect(url, autocommit=True) as reader:
        for table in ("frames", "frame_embeddings", "embedding_jobs", "models"):
            reader.execute(sql.SQL("SELECT count(*) FROM argus.{}").format(sql.Identifier(table)))
    assert denied(
        url, "INSERT INTO argus.frames (video_id, frame_index, image_uri) VALUES ('x', 0, 'y')"
    )
    assert denied(url, "INSERT INTO argus.embedding_jobs (video_id) VALUES ('v')")
    assert denied(url, "SELECT argus.enqueue_embedding_job('v')")
    assert denied(url, "UPDATE argus.embedding_jobs SET status = 'cancelled'")
    assert denied(url, "DELETE FROM argus.frame_embeddings")
    assert denied(url, "SELECT argus.ensure_model_index('m', 8, 'none')")
    assert denied(url, "CREATE TABLE argus.mine (id int)")


def test_worker_cannot_drop_alter_or_delete(login: Login) -> None:
    url = login("argus_worker")
    for statement in (
        "DROP TABLE argus.frame_embeddings",
        "DROP TABLE argus.embedding_jobs",
        "ALTER TABLE argus.frames ADD COLUMN x int",
        "ALTER TABLE argus.embedding_jobs DISABLE TRIGGER ALL",
        "TRUNCATE argus.frame_embeddings",
        "DELETE FROM argus.frames",
        "DELETE FROM argus.frame_embeddings",
        "UPDATE argus.frame_embeddings SET error = 'x'",
        "UPDATE argus.frames SET image_uri = 'x'",
        "CREATE TABLE argus.mine (id int)",
        "DROP FUNCTION argus.enqueue_embedding_job(text, text, integer)",
        "CREATE OR REPLACE FUNCTION argus.search_frames(p_model text, p_query vector, "
        "p_limit integer, p_video_id text, p_project_id text) RETURNS SETOF argus.frames "
        "LANGUAGE sql AS 'SELECT * FROM argus.frames'",
        "GRANT argus_reader TO CURRENT_USER",
    ):
        assert denied(url, statement), statement


def test_daemon_runs_as_a_login_role_holding_only_argus_worker(
    conn: psycopg.Connection[Any],
    login: Login,
    s3: S3Endpoint,
    tiny_siglip_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real daemon (model registration through the definer functions, partitions and
    segments, the reconciler, the write path) as `argus_worker` only; then status and
    search (by frame and by video) as `argus_reader` only, which also hears the
    completion that the worker's transaction announced (migration 0015's trigger)."""
    uris = [s3.put(f"roles/{i}.jpg", textured_jpeg(i)) for i in range(6)]
    support.add_video(conn, "roles", uris)
    worker_url = login("argus_worker")
    reader_url = login("argus_reader")
    listener = psycopg.connect(reader_url, autocommit=True)
    listener.execute("LISTEN argus_embedding_done")
    result = run_burst(
        {
            **os.environ,
            "ARGUS_DATABASE_URL": worker_url,
            "ARGUS_MODEL": str(tiny_siglip_dir),
            "ARGUS_DEVICE": "cpu",
            "ARGUS_S3_BUCKET": s3.bucket,
            "ARGUS_S3_ENDPOINT_URL": s3.url,
            "ARGUS_METRICS_PORT": "0",
            "ARGUS_RECONCILE_INTERVAL": "1",
        }
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "permission denied" not in result.stderr.lower(), result.stderr[-3000:]
    job = support.job(conn, 1)
    assert (job["status"], job["frames_done"], job["frames_failed"]) == ("succeeded", 6, 0)
    owners = conn.execute(
        "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'argus'"
    ).fetchall()
    assert all("_login_" not in row["owner"] for row in owners)  # the worker owns nothing
    with listener:
        heard = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
    assert [(p["job_id"], p["status"], p["frames_done"]) for p in heard] == [(1, "succeeded", 6)]

    monkeypatch.setenv("ARGUS_DATABASE_URL", reader_url)
    monkeypatch.setenv("ARGUS_MODEL", str(tiny_siglip_dir))
    monkeypatch.setenv("ARGUS_DEVICE", "cpu")
    assert cli.main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["jobs"]["succeeded"] == 1
    assert cli.main(["search", "a red car", "--limit", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert cli.main(["search", "a red car", "--by", "video", "--json"]) == 0
    assert [video["video_id"] for video in json.loads(capsys.readouterr().out)] == ["roles"]


def test_regression_bug11_the_frame_stage_cannot_choose_frame_ids(
    conn: psycopg.Connection[Any], login: Login
) -> None:
    """Regression (issue 16 bug 11): the frame stage could pick frame ids with OVERRIDING
    SYSTEM VALUE; an id <= 0 or near 2^63 has no segment to land in and crash-looped
    the fleet, and a huge one stretched every reconciler pass."""
    url = login("argus_frame_stage")
    with psycopg.connect(url, autocommit=True) as stage:
        stage.execute(
            "INSERT INTO argus.frames (video_id, project_id, frame_index, timestamp_ms, "
            "image_uri, created_at) VALUES ('v', 'p', 0, 0, 's3://b/0.jpg', now())"
        )
        stage.execute(
            "INSERT INTO argus.frames (video_id, frame_index, image_uri) "
            "VALUES ('v', 0, 's3://b/0.jpg'), ('v', 1, 's3://b/1.jpg') "
            "ON CONFLICT DO NOTHING"
        )
    for frame_id in (-5, 0, 2**63 - 800, 1000):
        assert denied(
            url,
            "INSERT INTO argus.frames (id, video_id, frame_index, image_uri) "
            "OVERRIDING SYSTEM VALUE VALUES (%s, 'forged', 0, 's3://b/x.jpg')",
            (frame_id,),
        ), frame_id
    rows = conn.execute("SELECT video_id, frame_index FROM argus.frames ORDER BY id").fetchall()
    assert [(row["video_id"], row["frame_index"]) for row in rows] == [("v", 0), ("v", 1)]

    for frame_id in (-5, 0):  # not even the owner stores an id a segment cannot hold
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO argus.frames (id, video_id, frame_index, image_uri) "
                "OVERRIDING SYSTEM VALUE VALUES (%s, 'owner', 0, 's3://b/x.jpg')",
                (frame_id,),
            )


def test_regression_bug11_the_worker_registers_new_models_only(
    conn: psycopg.Connection[Any], login: Login
) -> None:
    """Regression (issue 16 bug 11): argus_worker could call ensure_model_index, so drop a
    model's indexes or change its segment size (new segments then overlap the old ones
    and every write fails). It may now only register a model that is missing."""
    from argus_embedder import errors
    from argus_embedder.gateways import index

    index.register(conn, "owned", 8, "ivfflat", segment_rows=500)
    url = login("argus_worker")
    with db.connect(url, autocommit=True) as worker:
        fresh = index.register(worker, "fresh", 8)  # what a daemon does at start
        assert (fresh.dimension, fresh.index_kind, fresh.segment_rows) == (8, "hnsw", 100_000)
        assert index.register(worker, "fresh", 8) == fresh  # idempotent
        owned = index.register(worker, "owned", 8)  # registered already: left as it is
        assert (owned.index_kind, owned.segment_rows) == ("ivfflat", 500)
        with pytest.raises(errors.ConfigError, match="dimension"):
            index.register(worker, "owned", 16)
        with pytest.raises(errors.ConfigError, match="schema owner"):
            index.register(worker, "owned", 8, "none")
    for statement in (
        "SELECT argus.ensure_model_index('owned', 8, 'none')",
        "SELECT argus.ensure_model_index('owned', 8, 'ivfflat', 1)",
        "SELECT argus.ensure_model_index('other', 8, 'hnsw')",
    ):
        assert denied(url, statement), statement
    owned_row = conn.execute(
        "SELECT index_kind, segment_rows FROM argus.models WHERE model = 'owned'"
    ).fetchone()
    assert owned_row == {"index_kind": "ivfflat", "segment_rows": 500}


# A statement trigger that records, after every change of a job's status, how many jobs
# of project 'capped' are running: the most it ever saw is the cap as the daemon held it.
_CAP_WATCH = """
CREATE TABLE public.cap_watch (running integer NOT NULL);
CREATE FUNCTION public.cap_watch() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO public.cap_watch (running)
    SELECT count(*) FROM argus.embedding_jobs
    WHERE project_id = 'capped' AND status = 'running';
    RETURN NULL;
END;
$$;
CREATE TRIGGER cap_watch AFTER UPDATE OF status ON argus.embedding_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION public.cap_watch();
"""


def run_burst(env: dict[str, str], timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """`argus-embedder run --burst` in a child process; a run still going after `timeout`
    seconds (a claim that keeps failing never empties the queue) fails with its log."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "argus_embedder", "run", "--burst"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        said = expired.stderr.decode() if isinstance(expired.stderr, bytes) else expired.stderr
        raise AssertionError(f"run --burst still running after {timeout}s:\n{said}") from None


def test_regression_issue27_finding1_a_capped_project_runs_as_argus_worker(
    conn: psycopg.Connection[Any],
    database_url: str,
    worker_url: str,
    s3: S3Endpoint,
    tiny_siglip_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (issue 27, finding 1): claim_jobs locked the capped project's
    argus.projects row FOR NO KEY UPDATE with the caller's rights, and argus_worker holds
    only SELECT there: once a project had max_running, every claim that reached its lane
    failed with "permission denied for table projects", uncapped projects' jobs included.
    The lock now goes through the definer argus.lock_project_cap. A real `run --burst` as
    an argus_worker login: six jobs of a project capped at 1 and two uncapped, all done,
    never two of the capped project running at once."""
    conn.execute(_CAP_WATCH)
    for n in range(6):
        uris = [s3.put(f"cap/{n}/{i}.jpg", textured_jpeg(10 * n + i)) for i in range(2)]
        support.add_video(conn, f"capped-{n}", uris, project_id="capped")
    for n in range(2):
        uris = [s3.put(f"free/{n}/{i}.jpg", textured_jpeg(100 + 10 * n + i)) for i in range(2)]
        support.add_video(conn, f"free-{n}", uris, project_id="free")
    support.use_database(monkeypatch, database_url, tiny_siglip_dir)  # the operator's
    assert cli.main(["project", "set", "capped", "--max-running", "1"]) == 0
    result = run_burst(
        {
            **os.environ,
            "ARGUS_DATABASE_URL": worker_url,
            "ARGUS_MODEL": str(tiny_siglip_dir),
            "ARGUS_DEVICE": "cpu",
            "ARGUS_BATCH_SIZE": "4",  # tops up 8 frames: four 2-frame jobs at a time
            "ARGUS_S3_BUCKET": s3.bucket,
            "ARGUS_S3_ENDPOINT_URL": s3.url,
            "ARGUS_METRICS_PORT": "0",
            "ARGUS_POLL_INTERVAL": "0.2",
            "ARGUS_RECONCILE_INTERVAL": "0",
        }
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "permission denied" not in result.stderr.lower(), result.stderr[-3000:]
    assert "unexpected error" not in result.stderr.lower(), result.stderr[-3000:]
    jobs = conn.execute(
        "SELECT project_id, status, frames_done FROM argus.embedding_jobs ORDER BY id"
    ).fetchall()
    assert [(job["status"], job["frames_done"]) for job in jobs] == [("succeeded", 2)] * 8
    watched = conn.execute("SELECT max(running) AS most FROM public.cap_watch").fetchone()
    assert watched is not None
    print(f"capped project: at most {watched['most']} running of 6 jobs, 8 of 8 jobs done")
    assert watched["most"] == 1


def test_regression_issue27_finding4_the_retired_index_segment_is_gone(
    conn: psycopg.Connection[Any], login: Login
) -> None:
    """Regression (issue 27, finding 4): argus_worker could still execute the definer
    argus.index_segment that 0007 retired, and build HNSW on the live write segment
    (marking it indexed, so the compactor never covered it). It is dropped."""
    from argus_embedder.gateways import index

    index.register(conn, "retired", 8, "hnsw", segment_rows=100)
    conn.execute("SELECT argus.ensure_segments('retired', ARRAY[1]::bigint[])")
    url = login("argus_worker")
    with (
        psycopg.connect(url, autocommit=True) as worker,
        pytest.raises(psycopg.errors.UndefinedFunction),
    ):
        worker.execute("SELECT argus.index_segment('retired', 0)")
    segments = conn.execute(
        "SELECT index_name FROM argus.segments WHERE model = 'retired'"
    ).fetchall()
    assert segments and all(row["index_name"] is None for row in segments)
    definers = conn.execute(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'argus' AND p.prosecdef AND p.proname = 'index_segment'"
    ).fetchall()
    assert definers == []
