"""`argus-embedder project set|list` against a real PostgreSQL: settings round trip,
each project's backlog, rate and ETA, bad input and a role that may not write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql

from argus_embedder import cli, errors
from argus_embedder.commands import project, status
from argus_embedder.gateways import index, projects, queue, store
from tests import support

MODEL = "test/model"


@pytest.fixture
def env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ARGUS_DATABASE_URL", database_url)
    monkeypatch.setenv("ARGUS_MODEL", MODEL)
    return database_url


def settings_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return [
        (row["project_id"], row["weight"], row["max_running"])
        for row in conn.execute("SELECT * FROM argus.projects ORDER BY project_id")
    ]


def listed(capsys: pytest.CaptureFixture[str]) -> dict[str | None, dict[str, Any]]:
    assert cli.main(["project", "list", "--json"]) == 0
    return {row["project_id"]: row for row in json.loads(capsys.readouterr().out)["projects"]}


def test_set_changes_only_what_is_given_and_says_what_it_was(
    conn: psycopg.Connection[Any], env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    support.add_video(conn, "a1", ["x", "y"], project_id="acme")
    assert cli.main(["project", "set", "acme", "--weight", "3", "--max-running", "2"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "project acme: weight 3, cap 2 (new)"
    assert out.err == ""  # acme has frames: no typo warning
    assert settings_rows(conn) == [("acme", 3, 2)]

    assert cli.main(["project", "set", "acme", "--max-running", "none"]) == 0
    assert capsys.readouterr().out.strip() == "project acme: weight 3, no cap (was cap 2)"
    assert cli.main(["project", "set", "acme", "--max-running", "0"]) == 0
    assert capsys.readouterr().out.strip() == (
        "project acme: weight 3, paused (cap 0) (was no cap)"
    )
    assert cli.main(["project", "set", "acme", "--weight", "1"]) == 0
    assert capsys.readouterr().out.strip() == "project acme: weight 1 (was 3), paused (cap 0)"
    assert settings_rows(conn) == [("acme", 1, 0)]

    # A project nobody has ingested yet may be set up ahead, with a word about typos.
    assert cli.main(["project", "set", "acmee", "--weight", "2"]) == 0
    out = capsys.readouterr()
    assert "project acmee: weight 2, no cap (new)" in out.out
    assert "no frames name project 'acmee' yet" in out.err
    assert settings_rows(conn) == [("acme", 1, 0), ("acmee", 2, None)]


def test_a_paused_project_is_not_claimed_and_its_weight_is_used(
    conn: psycopg.Connection[Any], env: str
) -> None:
    support.add_video(conn, "p1", ["x"], project_id="paused")
    support.add_video(conn, "o1", ["x"], project_id="other")
    assert cli.main(["project", "set", "paused", "--max-running", "0"]) == 0
    claimer = queue.Queue(model=MODEL, worker_id="w", lease_seconds=60)
    assert [job.video_id for job in claimer.claim(conn, limit=5)] == ["o1"]
    assert claimer.claim(conn, limit=5) == []
    assert cli.main(["project", "set", "paused", "--max-running", "none"]) == 0
    assert [job.video_id for job in claimer.claim(conn, limit=5)] == ["p1"]


def test_list_shows_every_project_with_its_backlog(
    conn: psycopg.Connection[Any], env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(3):
        support.add_video(conn, f"big-{n}", ["x", "y", "z"], project_id="big")
    support.add_video(conn, "small-0", ["x"], project_id="small")
    support.add_video(conn, "orphan", ["x", "y"])  # frames naming no project
    assert cli.main(["project", "set", "idle", "--weight", "5", "--max-running", "4"]) == 0
    assert cli.main(["project", "set", "small", "--weight", "2"]) == 0
    capsys.readouterr()

    rows = listed(capsys)
    assert list(rows) == ["big", None, "small", "idle"]  # biggest backlog first
    assert {key: rows["big"][key] for key in ("weight", "max_running", "configured")} == {
        "weight": 1,
        "max_running": None,
        "configured": False,  # queued jobs, no settings row: the defaults
    }
    assert (rows["big"]["queued"], rows["big"]["running"], rows["big"]["frames_waiting"]) == (
        3,
        0,
        9,
    )
    assert rows[None]["frames_waiting"] == 2 and rows[None]["weight"] == 1
    assert (rows["small"]["weight"], rows["small"]["frames_waiting"]) == (2, 1)
    idle = rows["idle"]
    assert (idle["weight"], idle["max_running"], idle["queued"], idle["frames_waiting"]) == (
        5,
        4,
        0,
        0,
    )
    assert idle["eta_seconds"] == 0.0
    # Nothing was written lately: the ETA is unknown, not zero or infinite.
    assert rows["big"]["frames_per_second"] == 0 and rows["big"]["eta_seconds"] is None

    assert cli.main(["project", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "PROJECT",
        "WEIGHT",
        "CAP",
        "QUEUED",
        "RUNNING",
        "FRAMES",
        "WAITING",
        "FRAMES/S",
        "ETA",
    ]
    assert table[1].split() == ["big", "1", "—", "3", "0", "9", "0.0", "—"]
    assert table[2].split() == ["(none)", "1", "—", "1", "0", "2", "0.0", "—"]
    assert table[4].split() == ["idle", "5", "4", "0", "0", "0", "0.0", "0s"]


def test_a_running_project_has_a_rate_and_an_eta(
    conn: psycopg.Connection[Any], env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    support.add_video(conn, "w1", ["x", "y", "z"], project_id="waiting")
    # busy arrives last: on a tie of turns the newer project goes first.
    support.add_video(conn, "r1", [f"f{i}" for i in range(10)], project_id="busy")
    support.add_video(conn, "r2", ["x", "y"], project_id="busy")
    claimer = queue.Queue(model=MODEL, worker_id="w", lease_seconds=60)
    [job] = claimer.claim(conn)
    assert job.video_id == "r1"
    claimer.missing_frames(conn, [job])  # counts frames_total, as a worker does
    info = index.register(conn, MODEL, 4)
    ids = [
        row["id"]
        for row in conn.execute(
            "SELECT id FROM argus.frames WHERE video_id = 'r1' ORDER BY frame_index LIMIT 4"
        )
    ]
    index.Segments(info).ensure(conn, ids)
    vector = np.full(4, 0.5, dtype=np.float32)
    results = [store.FrameResult(frame_id, vector=vector) for frame_id in ids]
    store.write(conn, [store.JobWrite(job, results)], preprocessing="test", lease_seconds=60)

    rows = listed(capsys)
    busy = rows["busy"]
    # 6 frames left in the running job, 2 in the queued one.
    assert (busy["queued"], busy["running"], busy["frames_waiting"]) == (1, 1, 8)
    assert busy["frames_per_second"] > 0
    assert busy["eta_seconds"] == pytest.approx(8 / busy["frames_per_second"])
    assert rows["waiting"]["eta_seconds"] is None  # it has written nothing yet


def test_a_big_queue_is_counted_on_a_sample_per_project(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b", "c"):
        for n in range(4):
            support.add_video(conn, f"{name}-{n}", ["x", "y"], project_id=name)
    rows, total = projects.backlog(conn, model=MODEL, limit=None, include_idle=False)
    assert total == 3 and all(not row.frames_waiting_estimated for row in rows)
    # A budget of 2 sampled jobs over 3 projects still samples one job of each.
    rows, total = projects.backlog(conn, model=MODEL, limit=2, include_idle=False, sample=2)
    assert total == 3 and len(rows) == 2
    assert all(row.frames_waiting == 8 and row.frames_waiting_estimated for row in rows)
    monkeypatch.setattr(projects, "BACKLOG_SAMPLE", 2)
    assert "~8" in project.render(status.project_queue(conn, model=MODEL, top=None)["top"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["", "--weight", "2"], "must not be empty"),
        (["a\x00b", "--weight", "2"], "must not contain a NUL byte"),
        (["acme", "--weight", "0"], "--weight must be a whole number from 1 to 10,000"),
        (["acme", "--weight", "10001"], "--weight must be a whole number from 1 to 10,000"),
        (["acme", "--weight", "lots"], "not 'lots'"),
        (["acme", "--weight", "1.5"], "--weight must be a whole number"),
        (["acme", "--max-running", "-1"], "--max-running must be a whole number of jobs"),
        (["acme", "--max-running", "99999999999"], "--max-running must be a whole number"),
        (["acme", "--max-running", "unlimited"], "or 'none' (no cap)"),
        (["acme"], "nothing to set"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    conn: psycopg.Connection[Any],
    env: str,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    assert cli.main(["project", "set", *arguments]) == errors.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("argus-embedder: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert settings_rows(conn) == []


def test_a_role_that_may_not_write_settings_gets_a_message_not_a_traceback(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    name = f"argus_worker_login_project_{os.getpid()}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    conn.execute(sql.SQL("GRANT argus_worker TO {}").format(sql.Identifier(name)))
    try:
        url = psycopg.conninfo.make_conninfo(database_url, user=name)
        environment = {**os.environ, "ARGUS_DATABASE_URL": url}
        result = subprocess.run(
            [sys.executable, "-m", "argus_embedder", "project", "set", "p", "--weight", "2"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == errors.EXIT_FAILURE
        assert "Traceback" not in result.stderr
        assert "project set needs the schema owner's role" in result.stderr
        assert "permission denied for table projects" in result.stderr
        assert settings_rows(conn) == []
        # Reading is another matter: the worker (and the reader) may list.
        listing = subprocess.run(
            [sys.executable, "-m", "argus_embedder", "project", "list", "--json"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert listing.returncode == 0, listing.stderr
        assert json.loads(listing.stdout) == {"projects": [], "rate_window_seconds": 300.0}
    finally:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_the_reader_role_sees_the_projects_in_status_and_project_list(
    conn: psycopg.Connection[Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    support.add_video(conn, "v", ["x", "y"], project_id="acme")
    conn.execute("INSERT INTO argus.projects (project_id, weight) VALUES ('acme', 2)")
    name = f"argus_reader_login_project_{os.getpid()}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    conn.execute(sql.SQL("GRANT argus_reader TO {}").format(sql.Identifier(name)))
    try:
        monkeypatch.setenv(
            "ARGUS_DATABASE_URL", psycopg.conninfo.make_conninfo(database_url, user=name)
        )
        assert cli.main(["status", "--json"]) == 0
        [row] = json.loads(capsys.readouterr().out)["projects"]["top"]
        assert (row["project_id"], row["weight"], row["frames_waiting"]) == ("acme", 2, 2)
        assert cli.main(["project", "list"]) == 0
        assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["acme", "2"]
        assert cli.main(["project", "set", "acme", "--weight", "3"]) == errors.EXIT_FAILURE
        assert "needs the schema owner's role" in capsys.readouterr().err
    finally:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_an_unpaused_project_takes_its_share_not_every_claim(
    conn: psycopg.Connection[Any], env: str
) -> None:
    for name in ("a", "b", "c"):
        for n in range(80):
            support.add_video(conn, f"{name}-{n}", ["x"], project_id=name)
    assert cli.main(["project", "set", "c", "--max-running", "0"]) == 0
    claimer = queue.Queue(model=MODEL, worker_id="w", lease_seconds=60)
    for _ in range(60):  # a and b take turns while c is paused
        claimer.claim(conn)
    assert cli.main(["project", "set", "c", "--max-running", "none"]) == 0
    taken = [job.video_id[0] for _ in range(30) for job in claimer.claim(conn)]
    # Three projects of weight 1: about 10 claims each (before the fix: c took all 30).
    assert taken.count("a") >= 5 and taken.count("b") >= 5, taken
