"""Hostile text in search queries, video ids and image URIs: quotes, `;`, NUL bytes,
1 MB strings, path traversal in file:// — a clear error or a harmless result, never SQL
and never bytes of a file the URI does not name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from argus_embedder import cli, errors
from argus_embedder.pipeline import embedder
from tests import support
from tests.conftest import S3Endpoint
from tests.faults import invariants
from tests.faults.conftest import run_worker, small_jpeg

INJECTION = "x'); DROP TABLE argus.frames; --"
MEGABYTE = "é" * 500_000  # 1 MB of UTF-8 that does not compress to nothing


def tables_intact(connection: psycopg.Connection[Any]) -> None:
    for table in ("frames", "frame_embeddings", "embedding_jobs", "models"):
        connection.execute(f"SELECT count(*) FROM argus.{table}")


def one_clear_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("argus-embedder: "), err[:2000]
    assert "Traceback" not in err
    return lines[0]


def test_hostile_search_and_enqueue_arguments(
    audited: psycopg.Connection[Any],
    s3: S3Endpoint,
    database_url: str,
    tiny_siglip_dir: Path,
    tiny_embedder: embedder.Embedder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    support.add_video(audited, "ok", [s3.put("ok/0.jpg", small_jpeg(0))])
    monkeypatch.setenv("PGAPPNAME", "hostile")
    run_worker(database_url, tiny_embedder, bucket=s3.bucket, endpoint=s3.url, worker_id="hostile")
    monkeypatch.setenv("ARGUS_DATABASE_URL", database_url)
    monkeypatch.setenv("ARGUS_MODEL", str(tiny_siglip_dir))
    monkeypatch.setenv("ARGUS_DEVICE", "cpu")

    harmless = [
        ["search", INJECTION, "--json"],
        ["search", "a\x00b", "--json"],  # NUL in the text only reaches the tokenizer
        ["search", "", "--json"],
        ["search", "‮ rtl override 🚗", "--json"],
        ["search", "car", "--video", INJECTION, "--json"],
        ["search", "car", "--project", MEGABYTE, "--json"],
    ]
    for argv in harmless:
        assert cli.main(argv) == 0, argv
        hits = json.loads(capsys.readouterr().out)
        assert isinstance(hits, list)
    assert cli.main(["search", MEGABYTE]) == errors.EXIT_FAILURE
    assert "longer than" in one_clear_line(capsys.readouterr().err)
    assert cli.main(["search", "car", "--video", "a\x00b"]) == errors.EXIT_FAILURE
    assert "NUL" in one_clear_line(capsys.readouterr().err)

    for video in (INJECTION, "a\x00b", "../../etc/passwd"):
        assert cli.main(["enqueue", video]) == errors.EXIT_FAILURE
        line = one_clear_line(capsys.readouterr().err)
        assert "no frames" in line or "NUL" in line, line
    assert cli.main(["enqueue", MEGABYTE]) == errors.EXIT_FAILURE
    assert "no frames" in one_clear_line(capsys.readouterr().err)
    tables_intact(audited)


def test_enqueue_error_for_a_huge_video_id_is_short(
    conn: psycopg.Connection[Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ARGUS_DATABASE_URL", database_url)
    assert cli.main(["enqueue", MEGABYTE]) == errors.EXIT_FAILURE
    assert len(capsys.readouterr().err) < 2_000


def test_hostile_video_ids_and_image_uris_through_the_worker(
    audited: psycopg.Connection[Any],
    s3: S3Endpoint,
    database_url: str,
    tiny_embedder: embedder.Embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:hunter2-planted-secret:0:0:/root\n")
    image = tmp_path / "frames" / "0.jpg"
    image.parent.mkdir()
    image.write_bytes(small_jpeg(1))
    s3.put("quote's;semi.jpg", small_jpeg(2))
    traversal = f"file://{image.parent}/../secret.txt"
    cases: list[tuple[str, str | None]] = [
        (image.as_uri(), None),
        (f"s3://{s3.bucket}/quote's;semi.jpg", None),
        (traversal, "not an image: text"),  # names secret.txt: read, refused, not echoed
        (f"file://{image.parent}/..%2Fsecret.txt", "not an image: text"),
        ("file:///etc/passwd", "not an image: text"),
        (f"s3://{s3.bucket}/../../etc/passwd", "NoSuchKey"),  # a literal key, not a path
        ("s3://" + "b" * 5000 + "/k.jpg", "too long"),
        ("x" * 1_000_000, "too long"),
        (f"s3://{s3.bucket}/{INJECTION}", "NoSuchKey"),
        ("javascript:alert(1)", "unsupported scheme"),
    ]
    for video in (INJECTION, "‮rtl🚗", "../../etc"):
        support.add_video(audited, video, [uri for uri, _ in cases])
    monkeypatch.setenv("PGAPPNAME", "hostile")
    run_worker(database_url, tiny_embedder, bucket=s3.bucket, endpoint=s3.url, worker_id="hostile")
    tables_intact(audited)
    figures = invariants.check_invariants(audited)
    assert figures.statuses == {"succeeded": 3}
    rows = audited.execute(
        "SELECT f.video_id, f.frame_index, e.error, e.embedding IS NOT NULL AS embedded "
        "FROM argus.frame_embeddings e JOIN argus.frames f ON f.id = e.frame_id"
    ).fetchall()
    assert len(rows) == 3 * len(cases)
    for row in rows:
        uri, message = cases[row["frame_index"]]
        if message is None:
            assert row["embedded"], (uri, row["error"])
        else:
            assert row["error"] is not None and message in row["error"], (uri, row["error"])
            assert "hunter2" not in row["error"] and "root:" not in row["error"]
            assert len(row["error"]) <= 1000
    invariants.report(figures, "hostile-input", uris=len(cases), videos=3)
