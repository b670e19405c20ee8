"""Least privilege (DESIGN §2): each role can do its job and nothing else.

Login roles are created per test and granted exactly one of the NOLOGIN roles that
`migrate` creates; the embedded server trusts local connections, so a role name in the
URL is enough to act as it.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql

from argus_embedder import cli, db
from tests import support
from tests.conftest import S3Endpoint, textured_jpeg

_ROLE_COUNTER = itertools.count()

Login = Callable[[str], str]


@pytest.fixture
def login(conn: psycopg.Connection[Any], database_url: str) -> Iterator[Login]:
    """login("argus_worker") -> the URL of a fresh LOGIN role holding only that role."""
    created: list[str] = []

    def make(granted: str) -> str:
        name = f"{granted}_login_{os.getpid()}_{next(_ROLE_COUNTER)}"
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), sql.Identifier(name))
        )
        created.append(name)
        return psycopg.conninfo.make_conninfo(database_url, user=name)

    yield make
    for name in created:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


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
    result = subprocess.run(
        [sys.executable, "-m", "argus_embedder", "run", "--burst"],
        env={
            **os.environ,
            "ARGUS_DATABASE_URL": worker_url,
            "ARGUS_MODEL": str(tiny_siglip_dir),
            "ARGUS_DEVICE": "cpu",
            "ARGUS_S3_BUCKET": s3.bucket,
            "ARGUS_S3_ENDPOINT_URL": s3.url,
            "ARGUS_METRICS_PORT": "0",
            "ARGUS_RECONCILE_INTERVAL": "1",
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
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
