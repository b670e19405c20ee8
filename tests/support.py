"""Helpers shared by the integration and acceptance tests."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql

from argus_embedder import cli, settings
from argus_embedder.gateways import frames, queue

_LOGIN_COUNTER = itertools.count()


def create_login(database_url: str, *granted: str) -> str:
    """Create a LOGIN role holding only the `granted` NOLOGIN roles (argus_worker,
    argus_reader, argus_frame_stage), as production runs the daemon and serve, and return
    its URL on `database_url`'s database (an admin's URL); the embedded server trusts local
    connections, so the role's name in the URL is enough to act as it."""
    name = f"{'_'.join(granted)}_login_{os.getpid()}_{next(_LOGIN_COUNTER)}"
    role = sql.Identifier(name)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        for each in granted:
            admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(each), role))
    return psycopg.conninfo.make_conninfo(database_url, user=name)


@contextlib.contextmanager
def login_role(database_url: str, *granted: str) -> Iterator[str]:
    """`create_login`'s URL; the role and its sessions are dropped when the block ends."""
    url = create_login(database_url, *granted)
    role = psycopg.conninfo.conninfo_to_dict(url)["user"]
    try:
        yield url
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(str(role))))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(str(role))))


def add_video(
    connection: psycopg.Connection[Any],
    video_id: str,
    uris: list[str],
    *,
    enqueue: bool = True,
    priority: int = 0,
    project_id: str | None = None,
    first_index: int = 0,
    interval_ms: int | None = None,
) -> int | None:
    """Insert a video's frames the way the frame stage does, then (optionally) its job.
    With `interval_ms`, frame i is at i * interval_ms into the video."""
    frames.insert(
        connection,
        [
            frames.NewFrame(
                video_id,
                first_index + i,
                uri,
                project_id=project_id,
                timestamp_ms=None if interval_ms is None else (first_index + i) * interval_ms,
            )
            for i, uri in enumerate(uris)
        ],
    )
    if not enqueue:
        return None
    return queue.enqueue(connection, video_id, model=None, priority=priority)


def job(connection: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    row = connection.execute(
        "SELECT * FROM argus.embedding_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row is not None
    return dict(row)


def embeddings(connection: psycopg.Connection[Any], video_id: str) -> list[dict[str, Any]]:
    return connection.execute(
        "SELECT e.*, f.frame_index FROM argus.frame_embeddings e "
        "JOIN argus.frames f ON f.id = e.frame_id WHERE f.video_id = %s ORDER BY f.frame_index",
        (video_id,),
    ).fetchall()


def worker_settings(
    database_url: str, bucket: str, endpoint: str, model: str, *, batch_size: int, **extra: Any
) -> settings.Settings:
    """Settings for an in-process Worker against the test database and S3 endpoint."""
    values = {
        "database_url": database_url,
        "model": model,
        "device": "cpu",
        "batch_size": str(batch_size),
        "s3_bucket": bucket,
        "s3_endpoint_url": endpoint,
        "metrics_port": "0",
        "poll_interval": "0.1",
        "worker_id": "test-worker",
        **{key: str(value) for key, value in extra.items()},
    }
    return settings.load(env={}, **values)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every 50 ms; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def claim_plans(connection: psycopg.Connection[Any], q: queue.Queue, limit: int = 1) -> str:
    """The plans of every statement argus.claim_jobs runs for one claim (auto_explain
    at NOTICE level, nested statements), the claim itself rolled back."""
    notices: list[str] = []

    def keep(diagnostic: psycopg.errors.Diagnostic) -> None:
        notices.append(diagnostic.message_primary or "")

    connection.add_notice_handler(keep)
    try:
        with connection.transaction(force_rollback=True):
            connection.execute("LOAD 'auto_explain'")
            for setting in (
                "auto_explain.log_min_duration = 0",
                "auto_explain.log_nested_statements = on",
                "auto_explain.log_level = notice",
            ):
                connection.execute(f"SET LOCAL {setting}")  # type: ignore[arg-type]
            connection.execute(
                "SELECT * FROM argus.claim_jobs(%s, %s, %s, %s, false)",
                (q.model, q.worker_id, limit, q.lease_seconds),
            ).fetchall()
    finally:
        connection.remove_notice_handler(keep)
    return "\n".join(notices)


def use_database(monkeypatch: pytest.MonkeyPatch, database_url: str, model: Path | str) -> None:
    """Point in-process CLI commands at the test database and model (no metrics port)."""
    monkeypatch.setenv("ARGUS_DATABASE_URL", database_url)
    monkeypatch.setenv("ARGUS_MODEL", str(model))
    monkeypatch.setenv("ARGUS_METRICS_PORT", "0")


def ingest_and_embed(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    model: Path | str,
    folder: Path,
    *,
    video_id: str = "clip",
    project_id: str = "p1",
) -> None:
    """What a user does first: `ingest VIDEO FOLDER --project P`, then `run --burst`, the
    daemon as a login holding only argus_worker (as production runs it); the environment
    points at `database_url` again after."""
    use_database(monkeypatch, database_url, model)
    assert cli.main(["ingest", video_id, str(folder), "--project", project_id]) == 0
    with login_role(database_url, "argus_worker") as worker_url:
        monkeypatch.setenv("ARGUS_DATABASE_URL", worker_url)
        assert cli.main(["run", "--burst"]) == 0
    monkeypatch.setenv("ARGUS_DATABASE_URL", database_url)


@dataclasses.dataclass(frozen=True)
class Served:
    port: int
    process: subprocess.Popen[str]
    said: list[str]  # its stderr up to the line that gave the port


@contextlib.contextmanager
def serve_process(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> Iterator[Served]:
    """`argus-embedder serve --port 0 ARGS` in a child process, once it says where it
    listens; SIGTERM (then SIGKILL) when the block ends. Its stderr is drained to a list
    the failure message shows."""
    process = subprocess.Popen(
        [sys.executable, "-m", "argus_embedder", "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=None if env is None else dict(env),
    )
    assert process.stderr is not None
    said: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        port = None
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            said.append(line)
            if "serving search on http://" in line:
                port = int(line.split("http://", 1)[1].split()[0].rsplit(":", 1)[1])
            elif not line:
                break
        assert port is not None, "serve never said where it listens:\n" + "".join(said)
        yield Served(port, process, said)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()
