"""backfill, prune and a whole model switch against a real PostgreSQL, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from argus_embedder import cli, errors
from argus_embedder.commands import backfill
from argus_embedder.gateways import index, queue
from tests import support
from tests.conftest import textured_jpeg

NEW = "test/new-model"


def jobs(conn: psycopg.Connection[Any]) -> list[tuple[str, str | None, int, str]]:
    return [
        (row["video_id"], row["model"], row["priority"], row["status"])
        for row in conn.execute(
            "SELECT video_id, model, priority, status FROM argus.embedding_jobs ORDER BY id"
        )
    ]


def embed_rows(conn: psycopg.Connection[Any], model: str, video_id: str) -> None:
    info = index.info(conn, model)
    assert info is not None
    ids = [
        row["id"]
        for row in conn.execute("SELECT id FROM argus.frames WHERE video_id = %s", (video_id,))
    ]
    index.Segments(info).ensure(conn, ids)
    conn.execute(
        "INSERT INTO argus.frame_embeddings (frame_id, model, embedding) "
        "SELECT id, %s, '[1,0,0,0]' FROM argus.frames WHERE video_id = %s",
        (model, video_id),
    )


def test_backfill_twice_adds_the_same_jobs_once(
    conn: psycopg.Connection[Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ARGUS_DATABASE_URL", database_url)
    monkeypatch.delenv("ARGUS_MODEL", raising=False)  # the daemons run the default model
    index.register(conn, NEW, 4, "none")
    support.add_video(conn, "done", ["a", "b"], enqueue=False)
    embed_rows(conn, NEW, "done")
    support.add_video(conn, "queued-new", ["a"], enqueue=False)
    queue.enqueue(conn, "queued-new", model=NEW, priority=0)
    support.add_video(conn, "queued-default", ["a"])  # NULL: the default model, not NEW
    support.add_video(conn, "in-p1", ["a", "b"], enqueue=False, project_id="p1")
    support.add_video(conn, "plain", ["a"], enqueue=False)
    before = jobs(conn)

    assert cli.main(["backfill", "--model", NEW, "--project", "p1"]) == 0
    assert "1 job(s) enqueued at priority -10" in capsys.readouterr().out
    assert jobs(conn) == [*before, ("in-p1", NEW, -10, "queued")]

    assert cli.main(["backfill", "--model", NEW]) == 0
    out = capsys.readouterr().out
    assert "5 video(s) checked, 4 lacking rows, 2 job(s) enqueued" in out
    first = jobs(conn)
    assert first[len(before) + 1 :] == [
        ("plain", NEW, -10, "queued"),
        ("queued-default", NEW, -10, "queued"),
    ]

    assert cli.main(["backfill", "--model", NEW]) == 0
    assert "0 job(s) enqueued" in capsys.readouterr().out
    assert jobs(conn) == first  # twice = the same jobs

    # Where NEW is the daemons' configured model, a queued job naming none covers it.
    monkeypatch.setenv("ARGUS_MODEL", NEW)
    support.add_video(conn, "fresh", ["a"])
    assert cli.main(["backfill", "--model", NEW, "--priority", "-3"]) == 0
    assert jobs(conn) == [*first, ("fresh", None, 0, "queued")]

    assert cli.main(["backfill", "--model", "test/unknown"]) == errors.EXIT_FAILURE
    assert "migrate --model test/unknown" in capsys.readouterr().err
    assert cli.main(["backfill"]) == errors.EXIT_FAILURE
    assert "--model" in capsys.readouterr().err


def test_backfill_walks_videos_in_bounded_batches(conn: psycopg.Connection[Any]) -> None:
    index.register(conn, NEW, 4, "none")
    for n in range(7):
        support.add_video(conn, f"video-{n}", ["a", "b"], enqueue=False)
    embed_rows(conn, NEW, "video-3")
    result = backfill.backfill(conn, NEW, configured_model="other", batch=2)
    assert (result.videos, result.lacking, result.enqueued) == (7, 6, 6)
    assert sorted(row[0] for row in jobs(conn)) == [f"video-{n}" for n in (0, 1, 2, 4, 5, 6)]
    assert backfill.backfill(conn, NEW, configured_model="other", batch=3).enqueued == 0


def test_a_model_switch_without_a_search_outage(
    conn: psycopg.Connection[Any],
    database_url: str,
    tiny_siglip_dir: Path,
    tiny_naflex_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The docs' walk-through: OLD serves search while NEW is backfilled, then OLD goes."""
    old, new = str(tiny_siglip_dir), str(tiny_naflex_dir)
    folder = tmp_path / "frames"
    folder.mkdir()
    for n in range(6):
        (folder / f"{n:03d}.jpg").write_bytes(textured_jpeg(n))
    monkeypatch.setenv("ARGUS_DATABASE_URL", database_url)
    monkeypatch.setenv("ARGUS_METRICS_PORT", "0")
    monkeypatch.setenv("ARGUS_DEVICE", "cpu")
    monkeypatch.setenv("ARGUS_MODEL", old)
    assert cli.main(["ingest", "clip", str(folder)]) == 0
    assert cli.main(["run", "--burst"]) == 0

    def coverage() -> dict[str, float]:
        assert cli.main(["status", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        return {row["model"]: row["coverage"] for row in report["coverage"]}

    capsys.readouterr()
    assert cli.main(["migrate", "--model", new, "--index", "hnsw"]) == 0
    assert cli.main(["backfill", "--model", new]) == 0
    assert "1 job(s) enqueued" in capsys.readouterr().out
    assert coverage() == {old: 1.0, new: 0.0}
    assert cli.main(["search", "a red car", "--json"]) == 0  # OLD still answers
    assert len(json.loads(capsys.readouterr().out)) == 6

    assert cli.main(["run", "--burst", "--model", new]) == 0  # a daemon already on NEW
    assert coverage() == {old: 1.0, new: 1.0}
    assert cli.main(["search", "a red car", "--model", new, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 6

    assert cli.main(["prune", "--model", old]) == errors.EXIT_FAILURE  # still ARGUS_MODEL
    assert "configured model" in capsys.readouterr().err
    monkeypatch.setenv("ARGUS_MODEL", new)  # the switch: daemons and search on NEW
    queue.enqueue(conn, "clip", model=old, priority=0)  # a straggler nobody will run
    assert cli.main(["prune", "--model", old]) == 0
    assert "pruned" in (out := capsys.readouterr().out) and "6 row(s)" in out
    assert "1 queued job(s) cancelled" in out
    assert coverage() == {new: 1.0}
    assert cli.main(["search", "a red car", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 6
    assert cli.main(["search", "a red car", "--model", old]) == errors.EXIT_FAILURE
    assert f"registered: {new}" in capsys.readouterr().err
    assert cli.main(["prune", "--model", old]) == errors.EXIT_FAILURE  # nothing left
