"""Fair share across projects against a real PostgreSQL: turns, weights, caps, priority."""

from __future__ import annotations

import collections
import concurrent.futures
import re
import statistics
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from argus_embedder import db
from argus_embedder.gateways import queue
from tests import support

MODEL = "test/model"


def make_queue(worker: str = "w1") -> queue.Queue:
    return queue.Queue(model=MODEL, worker_id=worker, lease_seconds=60.0)


def backlog(
    conn: psycopg.Connection[Any], project: str | None, count: int, *, priority: int = 0
) -> None:
    """`count` queued jobs for `project`, inserted in one statement as a frame stage would."""
    tag = project or "none"
    conn.execute(
        "INSERT INTO argus.embedding_jobs (video_id, project_id, priority) "
        "SELECT %s || '-' || g, %s, %s FROM generate_series(1, %s) g",
        (f"{tag}-p{priority}", project, priority, count),
    )


def claimed_projects(conn: psycopg.Connection[Any], count: int, limit: int = 1) -> list[str]:
    """The project of each job claimed by `count` claims ("none" for the NULL project)."""
    ids = []
    q = make_queue()
    for _ in range(count):
        ids += [job.id for job in q.claim(conn, limit=limit)]
    rows = conn.execute(
        "SELECT id, coalesce(project_id, 'none') AS project FROM argus.embedding_jobs "
        "WHERE id = ANY(%s)",
        (ids,),
    ).fetchall()
    project = {row["id"]: row["project"] for row in rows}
    return [project[job_id] for job_id in ids]


def set_project(
    conn: psycopg.Connection[Any], project: str, *, weight: int = 1, max_running: int | None = None
) -> None:
    conn.execute(
        "INSERT INTO argus.projects (project_id, weight, max_running) VALUES (%s, %s, %s) "
        "ON CONFLICT (project_id) DO UPDATE SET weight = EXCLUDED.weight, "
        "max_running = EXCLUDED.max_running",
        (project, weight, max_running),
    )


def test_a_job_takes_its_project_from_the_videos_frames(conn: psycopg.Connection[Any]) -> None:
    support.add_video(conn, "v1", ["x"], project_id="acme", enqueue=False)
    support.add_video(conn, "v2", ["x"], project_id="acme", enqueue=False)
    support.add_video(conn, "v3", ["x"], enqueue=False)
    # The DESIGN's two enqueue forms, neither naming the project.
    conn.execute("INSERT INTO argus.embedding_jobs (video_id) VALUES ('v1')")
    conn.execute("SELECT argus.enqueue_embedding_job('v2', model => NULL, priority => 0)")
    conn.execute("INSERT INTO argus.embedding_jobs (video_id) VALUES ('v3')")
    # A frame stage that names it is taken at its word; a video with no frames has none.
    conn.execute("INSERT INTO argus.embedding_jobs (video_id, project_id) VALUES ('v4', 'other')")
    conn.execute("INSERT INTO argus.embedding_jobs (video_id) VALUES ('v5')")
    rows = conn.execute(
        "SELECT video_id, project_id FROM argus.embedding_jobs ORDER BY video_id"
    ).fetchall()
    assert [(row["video_id"], row["project_id"]) for row in rows] == [
        ("v1", "acme"),
        ("v2", "acme"),
        ("v3", None),
        ("v4", "other"),
        ("v5", None),
    ]


def test_projects_take_turns_whatever_their_backlogs(conn: psycopg.Connection[Any]) -> None:
    backlog(conn, "big", 60)
    backlog(conn, "mid", 10)
    backlog(conn, "small", 3)
    order = claimed_projects(conn, 30)
    # Every round serves each project that still has work once.
    assert sorted(order[:3]) == ["big", "mid", "small"]
    assert sorted(order[3:9]) == ["big", "big", "mid", "mid", "small", "small"]
    counts = collections.Counter(order)
    # Once small and mid ran dry, the rest goes to big.
    assert counts["small"] == 3 and counts["mid"] == 10 and counts["big"] == 17


def test_weights_one_to_three_give_one_to_three_shares(conn: psycopg.Connection[Any]) -> None:
    set_project(conn, "light", weight=1)
    set_project(conn, "heavy", weight=3)
    backlog(conn, "light", 500)
    backlog(conn, "heavy", 500)
    counts = collections.Counter(claimed_projects(conn, 400))
    print(f"400 claims at weights 1:3: {dict(counts)}")
    assert counts["light"] + counts["heavy"] == 400
    assert 90 <= counts["light"] <= 110, counts
    assert 270 <= counts["heavy"] <= 330, counts


def test_one_multi_job_claim_takes_from_several_projects(conn: psycopg.Connection[Any]) -> None:
    backlog(conn, "a", 50)
    backlog(conn, "b", 50)
    backlog(conn, "c", 50)
    first = claimed_projects(conn, 1, limit=9)
    assert collections.Counter(first) == {"a": 3, "b": 3, "c": 3}, first


def test_priority_comes_first_strictly(conn: psycopg.Connection[Any]) -> None:
    backlog(conn, "backfill", 20, priority=-10)
    backlog(conn, "urgent", 5, priority=5)
    backlog(conn, "normal", 5)
    order = claimed_projects(conn, 12)
    assert order == ["urgent"] * 5 + ["normal"] * 5 + ["backfill"] * 2


def test_a_lower_priority_never_starts_while_a_claimer_holds_the_higher_lanes(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    backlog(conn, "normal", 5)
    backlog(conn, "other", 5)
    backlog(conn, "backfill", 5, priority=-10)
    with psycopg.connect(database_url) as holder:
        # A claimer in the middle of its claim: it holds both priority-0 lanes.
        holder.execute(
            "SELECT * FROM argus.claim_jobs(%s, 'holder', 2, 60, false)", (MODEL,)
        ).fetchall()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            other = pool.submit(claimed_projects, conn, 1)
            time.sleep(0.5)
            assert not other.done()  # it waits for a lane; it does not take the backfill
            holder.commit()
            assert other.result(timeout=10)[0] in {"normal", "other"}


def test_claimers_share_a_lane_alone_at_its_priority(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    backlog(conn, "normal", 5)
    backlog(conn, "backfill", 5, priority=-10)
    with psycopg.connect(database_url) as holder:
        holder.execute(
            "SELECT * FROM argus.claim_jobs(%s, 'holder', 1, 60, false)", (MODEL,)
        ).fetchall()
        # No turn to take with one project: a second claimer does not wait for the first.
        assert claimed_projects(conn, 1) == ["normal"]
        holder.rollback()


def test_the_null_project_is_one_more_project(conn: psycopg.Connection[Any]) -> None:
    backlog(conn, None, 20)
    backlog(conn, "p", 2)
    assert collections.Counter(claimed_projects(conn, 4)) == {"none": 2, "p": 2}


def test_a_new_projects_first_job_is_claimed_next_behind_a_long_backlog(
    conn: psycopg.Connection[Any],
) -> None:
    backlog(conn, "bulk", 1000)
    assert claimed_projects(conn, 7) == ["bulk"] * 7
    support.add_video(conn, "first-upload", ["x"], project_id="newcomer")
    assert claimed_projects(conn, 1) == ["newcomer"]
    assert claimed_projects(conn, 1) == ["bulk"]


def test_a_requeued_job_reopens_its_lane(conn: psycopg.Connection[Any]) -> None:
    backlog(conn, "p", 1)
    q = make_queue()
    [job] = q.claim(conn)
    assert q.claim(conn) == []  # the lane is found empty and closed
    assert conn.execute("SELECT count(*) AS n FROM argus.project_lanes").fetchone()["n"] == 0
    assert q.release(conn, job)
    assert [again.id for again in q.claim(conn)] == [job.id]


def test_a_paused_project_waits_and_others_run(conn: psycopg.Connection[Any]) -> None:
    set_project(conn, "paused", max_running=0)
    backlog(conn, "paused", 5)
    backlog(conn, "live", 2)
    assert claimed_projects(conn, 4) == ["live", "live"]
    set_project(conn, "paused", max_running=None)
    assert claimed_projects(conn, 1) == ["paused"]


def test_an_unpaused_project_takes_its_share_not_every_turn_it_missed(
    conn: psycopg.Connection[Any],
) -> None:
    set_project(conn, "paused", max_running=0)
    backlog(conn, "paused", 20)
    backlog(conn, "one", 60)
    backlog(conn, "two", 60)
    assert collections.Counter(claimed_projects(conn, 20)) == {"one": 10, "two": 10}
    set_project(conn, "paused", max_running=None)
    counts = collections.Counter(claimed_projects(conn, 9))
    assert counts == {"paused": 3, "one": 3, "two": 3}, counts


def test_a_lane_back_from_backoff_takes_its_share_not_every_turn_it_missed(
    conn: psycopg.Connection[Any],
) -> None:
    """Passed-over lanes are no longer moved every claim (0017): one that has due jobs
    again rejoins at the priority's turn, once."""
    backlog(conn, "one", 60)
    conn.execute(
        "INSERT INTO argus.embedding_jobs (video_id, project_id, run_at) "
        "SELECT 'sleepy-' || g, 'sleepy', now() + interval '10 minutes' "
        "FROM generate_series(1, 20) g"
    )
    backlog(conn, "two", 60)
    assert collections.Counter(claimed_projects(conn, 20)) == {"one": 10, "two": 10}
    conn.execute("UPDATE argus.embedding_jobs SET run_at = now() WHERE project_id = 'sleepy'")
    counts = collections.Counter(claimed_projects(conn, 9))
    assert counts == {"sleepy": 3, "one": 3, "two": 3}, counts


def test_a_lane_emptied_by_a_cancel_closes_while_others_have_work(
    conn: psycopg.Connection[Any],
) -> None:
    backlog(conn, "gone", 3)
    backlog(conn, "a", 20)
    backlog(conn, "b", 20)
    conn.execute("UPDATE argus.embedding_jobs SET status = 'cancelled' WHERE project_id = 'gone'")
    assert collections.Counter(claimed_projects(conn, 6)) == {"a": 3, "b": 3}
    lanes = conn.execute("SELECT project_id FROM argus.project_lanes ORDER BY 1").fetchall()
    assert [lane["project_id"] for lane in lanes] == ["a", "b"]


def test_a_higher_priority_in_backoff_lets_the_lower_run(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO argus.embedding_jobs (video_id, project_id, priority, run_at) "
        "SELECT 'later-' || g, 'p' || g, 5, now() + interval '10 minutes' "
        "FROM generate_series(1, 3) g"
    )
    backlog(conn, "normal", 3)
    assert claimed_projects(conn, 4) == ["normal"] * 3
    lanes = conn.execute("SELECT count(*) AS n FROM argus.project_lanes WHERE priority = 5")
    assert lanes.fetchone()["n"] == 3  # not closed: their jobs are still queued


@pytest.mark.parametrize("round_", range(3))
def test_max_running_holds_under_eight_concurrent_claimers(
    conn: psycopg.Connection[Any], database_url: str, round_: int
) -> None:
    set_project(conn, "capped", max_running=3)
    backlog(conn, "capped", 60)
    backlog(conn, "free", 60)
    start = threading.Barrier(8)

    def claimer(n: int) -> int:
        q = make_queue(f"w{n}")
        taken = 0
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as own:
            start.wait()
            for _ in range(4):
                taken += len(q.claim(own, limit=2))
        return taken

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        taken = sum(pool.map(claimer, range(8)))
    running = conn.execute(
        "SELECT project_id, count(*) AS n FROM argus.embedding_jobs "
        "WHERE status = 'running' GROUP BY project_id"
    ).fetchall()
    by_project = {row["project_id"]: row["n"] for row in running}
    assert by_project.get("capped") == 3, by_project
    assert sum(by_project.values()) == taken


def plan_and_time(conn: psycopg.Connection[Any]) -> tuple[str, float]:
    """The claim's nested plans, and the median of 20 real claims (ms)."""
    plan = support.claim_plans(conn, make_queue())
    times = []
    q = make_queue()
    for _ in range(20):
        started = time.perf_counter()
        assert q.claim(conn)
        times.append((time.perf_counter() - started) * 1000)
    return plan, statistics.median(times)


QUEUED_SCAN = re.compile(r"Index Scan using embedding_jobs_(lane|claim)_idx")


def test_the_claim_is_index_driven_with_a_million_queued_over_a_thousand_projects(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute(
        "INSERT INTO argus.embedding_jobs (video_id, project_id, run_at) "
        "SELECT 'q-' || g, 'project-' || (g % 1000), now() - interval '1 hour' "
        "FROM generate_series(1, 1000000) g"
    )
    conn.execute("ANALYZE argus.embedding_jobs")
    conn.execute("ANALYZE argus.project_lanes")
    plan, median_ms = plan_and_time(conn)
    assert "Seq Scan on embedding_jobs" not in plan, plan
    assert QUEUED_SCAN.search(plan), plan
    print(f"claim, 1M queued over 1,000 projects: median {median_ms:.2f} ms")


def test_the_claim_is_index_driven_with_a_million_finished_jobs_and_a_backlog(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute(
        "INSERT INTO argus.embedding_jobs (video_id, project_id, model, status, finished_at) "
        "SELECT 'old-' || g, 'project-' || (g %% 1000), %s, 'succeeded', now() "
        "FROM generate_series(1, 1000000) g",
        (MODEL,),
    )
    backlog(conn, "p1", 100)
    backlog(conn, "p2", 100)
    conn.execute("ANALYZE argus.embedding_jobs")
    plan, median_ms = plan_and_time(conn)
    assert "Seq Scan on embedding_jobs" not in plan, plan
    assert QUEUED_SCAN.search(plan), plan
    print(f"claim, 1M finished jobs: median {median_ms:.2f} ms")


def test_the_migration_gives_existing_jobs_their_project_and_lanes(
    empty_database_url: str,
) -> None:
    """0005 fills project_id of the jobs already there and opens lanes for the queued."""
    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as connection:
        connection.execute(db.queries()["migrations_bootstrap"])
        for migration in db.migrations():
            if migration.version == 5:
                connection.execute(
                    "INSERT INTO argus.frames (video_id, project_id, frame_index, image_uri) "
                    "VALUES ('a', 'acme', 0, 'k'), ('b', NULL, 0, 'k')"
                )
                connection.execute(
                    "INSERT INTO argus.embedding_jobs (video_id, status, priority) VALUES "
                    "('a', 'queued', 3), ('b', 'queued', 0), ('a', 'succeeded', 0)"
                )
            with connection.transaction():
                connection.execute(migration.sql.encode())
        jobs = connection.execute(
            "SELECT video_id, status, project_id FROM argus.embedding_jobs ORDER BY id"
        ).fetchall()
        lanes = connection.execute(
            "SELECT priority, project_id FROM argus.project_lanes ORDER BY priority"
        ).fetchall()
    assert [(j["video_id"], j["project_id"]) for j in jobs] == [
        ("a", "acme"),
        ("b", None),
        ("a", "acme"),
    ]
    assert [(lane["priority"], lane["project_id"]) for lane in lanes] == [(0, None), (3, "acme")]


def unclaimable_lanes(conn: psycopg.Connection[Any], kind: str, count: int) -> None:
    """`count` projects (lanes) with queued jobs that a MODEL claimer cannot take now."""
    if kind == "capped":
        conn.execute(
            "INSERT INTO argus.projects (project_id, max_running) "
            "SELECT 'capped-' || g, 1 FROM generate_series(1, %s) g",
            (count,),
        )
    if kind in {"capped", "twin"}:
        # One running job each: the project's cap is reached, or the queued job's twin runs.
        conn.execute(
            "INSERT INTO argus.embedding_jobs (video_id, project_id, model, status) "
            "SELECT %s || '-' || g, %s || '-' || g, %s, 'running' FROM generate_series(1, %s) g",
            (f"{kind}-running" if kind == "capped" else kind, kind, MODEL, count),
        )
    conn.execute(
        "INSERT INTO argus.embedding_jobs (video_id, project_id, model, run_at) "
        "SELECT %s || '-' || g, %s || '-' || g, %s, "
        "now() + CASE WHEN %s THEN interval '10 minutes' ELSE interval '0' END "
        "FROM generate_series(1, %s) g",
        (kind, kind, "other/model" if kind == "model" else None, kind == "backoff", count),
    )


# Lanes this transaction locked (xmax) or wrote (xmin), read in the claim's transaction.
LANES_TOUCHED = (
    "SELECT count(*) AS n FROM argus.project_lanes l "
    "WHERE l.xmin = pg_current_xact_id()::xid OR l.xmax = pg_current_xact_id()::xid"
)


def claims_beside(conn: psycopg.Connection[Any]) -> tuple[float, int]:
    """20 one-job claims: their median (ms) and the most lanes one of them locked or wrote."""
    times, touched = [], []
    for _ in range(20):
        with conn.transaction():
            started = time.perf_counter()
            rows = conn.execute(
                "SELECT * FROM argus.claim_jobs(%s, 'w1', 1, 60, false)", (MODEL,)
            ).fetchall()
            times.append((time.perf_counter() - started) * 1000)
            assert [row["busy"] for row in rows] == [False]
            touched.append(conn.execute(LANES_TOUCHED).fetchone()["n"])
    return statistics.median(times), max(touched)


@pytest.mark.parametrize("count", [1, 1000])
@pytest.mark.parametrize("kind", ["backoff", "capped", "model", "twin"])
def test_regression_issue27_b_a_claim_does_not_walk_the_lanes_with_nothing_claimable(
    conn: psycopg.Connection[Any], kind: str, count: int
) -> None:
    """Lanes with nothing this claimer can take (jobs in backoff, a project at its cap,
    another model's jobs, a running twin) cost a claim nothing to lock or write: before,
    every claim locked, tried and moved each of them (1,000 lanes: 1,001 lanes per claim)."""
    backlog(conn, "live", 100)
    unclaimable_lanes(conn, kind, count)
    conn.execute("ANALYZE argus.embedding_jobs")
    conn.execute("ANALYZE argus.project_lanes")
    median_ms, touched = claims_beside(conn)
    print(
        f"claim beside {count} {kind} lanes: median {median_ms:.2f} ms, "
        f"at most {touched} lanes locked or written"
    )
    # The live project's lane only: locked, and its pass moved.
    assert touched == 1, touched
