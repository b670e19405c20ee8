"""The command line against a real database: happy paths and every error path's exit code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from argus_embedder import cli, db, errors
from tests import support


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a child process."""
    child_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "argus_embedder", *args],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_lists_every_command() -> None:
    result = run_cli(["--help"])
    assert result.returncode == 0
    for command in (
        "migrate",
        "run",
        "enqueue",
        "ingest",
        "status",
        "search",
        "serve",
        "project",
        "cancel",
        "retry",
        "backfill",
        "prune",
        "demo",
        "bench",
    ):
        assert f"\n    {command} " in result.stdout, command


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ARGUS_DATABASE_URL", "mysql://localhost/db", "ARGUS_DATABASE_URL"),
        ("ARGUS_BATCH_SIZE", "lots", "ARGUS_BATCH_SIZE='lots' is not an integer"),
        ("ARGUS_BATCH_SIZE", "0", "ARGUS_BATCH_SIZE=0 must be at least 1"),
        ("ARGUS_DEVICE", "tpu", "ARGUS_DEVICE='tpu'"),
        ("ARGUS_METRICS_PORT", "70000", "ARGUS_METRICS_PORT"),
        ("ARGUS_LEASE_SECONDS", "-3", "ARGUS_LEASE_SECONDS"),
        ("ARGUS_POLL_INTERVAL", "soon", "ARGUS_POLL_INTERVAL"),
        ("ARGUS_S3_ENDPOINT_URL", "minio:9000", "ARGUS_S3_ENDPOINT_URL"),
    ],
)
def test_bad_variables_exit_78_with_one_clear_line(
    variable: str,
    value: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli.main(["status"]) == errors.EXIT_CONFIG
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_password_never_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ARGUS_DATABASE_URL", "postgresql://argus:s3cr3t-pw@127.0.0.1:1/argus")
    assert cli.main(["status"]) == errors.EXIT_FAILURE
    err = capsys.readouterr().err
    assert "cannot connect" in err
    assert "s3cr3t-pw" not in err


def test_unmigrated_database_exits_78(empty_database_url: str) -> None:
    result = run_cli(["status"], {"ARGUS_DATABASE_URL": empty_database_url})
    assert result.returncode == errors.EXIT_CONFIG
    assert "argus-embedder migrate" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_model_exits_78(database_url: str, tmp_path: Path) -> None:
    result = run_cli(
        ["run", "--burst"],
        {
            "ARGUS_DATABASE_URL": database_url,
            "ARGUS_MODEL": str(tmp_path / "no-such-model"),
            "ARGUS_METRICS_PORT": "0",
        },
    )
    assert result.returncode == errors.EXIT_CONFIG, result.stderr
    assert "no-such-model" in result.stderr
    assert "Traceback" not in result.stderr


def test_cuda_device_without_gpu_exits_78(database_url: str, tiny_siglip_dir: Path) -> None:
    result = run_cli(
        ["run", "--burst"],
        {
            "ARGUS_DATABASE_URL": database_url,
            "ARGUS_MODEL": str(tiny_siglip_dir),
            "ARGUS_DEVICE": "cuda",
            "ARGUS_METRICS_PORT": "0",
        },
    )
    assert result.returncode == errors.EXIT_CONFIG, result.stderr
    assert "cuda" in result.stderr.lower()


def test_migrate_is_idempotent_and_registers_the_model(
    empty_database_url: str,
    tiny_siglip_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARGUS_DATABASE_URL", empty_database_url)
    assert cli.main(["migrate"]) == 0
    assert cli.main(["migrate", "--model", str(tiny_siglip_dir), "--index", "ivfflat"]) == 0
    assert cli.main(["migrate", "--model", str(tiny_siglip_dir)]) == 0  # keeps the kind
    out = capsys.readouterr().out
    assert "dimension 32" in out
    with psycopg.connect(empty_database_url) as connection:
        row = connection.execute(
            "SELECT dimension, index_kind, partition_name FROM argus.models WHERE model = %s",
            (str(tiny_siglip_dir),),
        ).fetchone()
        assert row is not None and row[:2] == (32, "ivfflat")
        partition = connection.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE c.relname = %s",
            (row[2],),
        ).fetchone()
    assert partition is not None and str(tiny_siglip_dir) in partition[0]
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses an unknown kind
        cli.main(["migrate", "--model", str(tiny_siglip_dir), "--index", "btree"])
    assert exit_info.value.code == 2


def test_concurrent_migrations_are_serialized(empty_database_url: str) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "argus_embedder", "migrate"],
            env={**os.environ, "ARGUS_DATABASE_URL": empty_database_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], outputs
    applied = sorted(out for out, _ in outputs)
    counts = [re.findall(r"(\d+) migration\(s\) applied", out) for out in applied]
    assert sorted(counts) == [["0"], ["0"], [str(len(db.migrations()))]], applied
    with psycopg.connect(empty_database_url) as connection:
        rows = connection.execute(
            "SELECT version FROM argus.schema_migrations ORDER BY version"
        ).fetchall()
    assert rows == [(migration.version,) for migration in db.migrations()]


def test_enqueue_status_cancel_retry(
    conn: psycopg.Connection[Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ARGUS_DATABASE_URL", database_url)
    assert cli.main(["enqueue", "nope"]) == errors.EXIT_FAILURE
    assert "has no frames" in capsys.readouterr().err

    support.add_video(conn, "v", ["x", "y"], enqueue=False)
    assert cli.main(["enqueue", "v", "--priority", "3"]) == 0
    assert "enqueued job" in capsys.readouterr().out
    assert cli.main(["enqueue", "v"]) == 0
    assert "already has a queued job" in capsys.readouterr().out

    assert cli.main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["jobs"]["queued"] == 1
    assert report["oldest_queued_seconds"] is not None

    job_id = conn.execute("SELECT id FROM argus.embedding_jobs").fetchone()["id"]
    assert cli.main(["cancel", str(job_id)]) == 0
    assert cli.main(["cancel", str(job_id)]) == errors.EXIT_FAILURE
    assert "it is cancelled" in capsys.readouterr().err
    assert cli.main(["retry", str(job_id)]) == 0
    assert support.job(conn, job_id)["status"] == "queued"
    assert cli.main(["cancel", "999999"]) == errors.EXIT_FAILURE
    assert "no job 999999" in capsys.readouterr().err


def test_ingest_run_search_round_trip(
    conn: psycopg.Connection[Any],
    database_url: str,
    tiny_siglip_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.conftest import textured_jpeg

    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(6):
        (folder / f"{index:03d}.jpg").write_bytes(textured_jpeg(index))
    support.ingest_and_embed(monkeypatch, database_url, tiny_siglip_dir, folder)
    assert "ingested 6 frame(s)" in capsys.readouterr().out
    rows = support.embeddings(conn, "clip")
    assert len(rows) == 6 and all(row["embedding"] is not None for row in rows)

    assert cli.main(["search", "a sunny beach", "--limit", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)
    assert (
        cli.main(["search", "--image", str(folder / "004.jpg"), "--json", "--video", "clip"]) == 0
    )
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["frame_index"] == 4
    assert hits[0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert cli.main(["search", "x", "--project", "p2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    # --by video: one video, its best moments; ingest gives no timestamps, so no ranges
    image = str(folder / "004.jpg")
    assert cli.main(["search", "--image", image, "--by", "video", "--json", "--video", "clip"]) == 0
    [video] = json.loads(capsys.readouterr().out)
    assert (video["video_id"], video["project_id"]) == ("clip", "p1")
    assert 1 <= len(video["moments"]) <= 3
    best = video["moments"][0]
    assert best["frame_index"] == 4 and best["score"] == pytest.approx(1.0, abs=2e-3)
    assert video["score"] == best["score"]
    assert (best["start_ms"], best["end_ms"], best["timestamp_ms"]) == (None, None, None)
    assert cli.main(["search", "a sunny beach", "--by", "video", "--project", "p1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("  1. ") and "video clip (project p1)" in lines[0]
    assert 2 <= len(lines) <= 4
    assert all(line.startswith("       --:--\N{EN DASH}--:--  frame ") for line in lines[1:])
    assert cli.main(["search", "x", "--by", "video", "--project", "p2"]) == 0
    assert capsys.readouterr().out == "no videos found\n"
    assert cli.main(["search"]) == errors.EXIT_FAILURE
    assert cli.main(["ingest", "v", str(tmp_path / "missing")]) == errors.EXIT_FAILURE
    assert "no such file or folder" in capsys.readouterr().err
