"""The whole-database invariants every fault scenario ends with, and its figure line.

`check_invariants` reads the database after a scenario and asserts (issue 11):

- every frame of every succeeded job has exactly one row for the job's model, a unit
  vector of the model's dimension or an error (nothing lost, nothing duplicated);
- no row was committed under a stale lease: the write audit trigger records, for every
  committed row, which process wrote it and whether that process held the running lease
  of the frame's job inside the writing transaction;
- progress columns equal the rows actually written (frames_done, frames_failed);
- no job is `running` without a live lease, and finished jobs hold no token;
- every failed job has its error history and used its attempts;
- the daemons still alive answer /livez.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg.rows

from tests.faults.harness import Daemon

_AUDIT_SQL = """
CREATE SCHEMA IF NOT EXISTS faults;
CREATE TABLE IF NOT EXISTS faults.writes (
    frame_id bigint      NOT NULL,
    model    text        NOT NULL,
    writer   text        NOT NULL,
    job_id   bigint      NULL,      -- the running job this writer held, NULL if none
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION faults.audit_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO faults.writes (frame_id, model, writer, job_id)
    VALUES (NEW.frame_id, NEW.model, current_setting('application_name'),
            (SELECT j.id FROM argus.embedding_jobs j
             JOIN argus.frames f ON f.video_id = j.video_id
             WHERE f.id = NEW.frame_id AND j.model = NEW.model AND j.status = 'running'
               AND j.lease_token IS NOT NULL
               AND j.worker_id = current_setting('application_name')));
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS faults_audit ON argus.frame_embeddings;
CREATE TRIGGER faults_audit AFTER INSERT ON argus.frame_embeddings
    FOR EACH ROW EXECUTE FUNCTION faults.audit_write();
"""


def activity(connection: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Who is connected to this database and what each session waits on (diagnostics)."""
    return _rows(
        connection,
        "SELECT application_name, state, wait_event_type, wait_event, "
        "left(query, 120) AS query, now() - xact_start AS in_transaction "
        "FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() ORDER BY application_name",
    )


def install_write_audit(connection: psycopg.Connection[Any]) -> None:
    """Record who wrote each frame row, and under which lease (test databases only).

    Daemons started by the fleet set PGAPPNAME to their worker id, so inside the writing
    transaction the trigger can check that the writer is the worker of the frame's
    running job. A write fenced out by a stale token never commits, so never shows here.
    """
    connection.execute(_AUDIT_SQL)


@dataclasses.dataclass
class Figures:
    """What a scenario did, counted from the database."""

    jobs: int
    statuses: dict[str, int]
    frames: int
    embedded: int
    errors: int
    lost: int
    duplicated: int
    stale_writes: int
    audited_writes: int

    def line(self, scenario: str, runs: int = 1, **extra: object) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()) if v)
        more = "".join(f" {key}={value}" for key, value in extra.items())
        return (
            f"FIGURE {scenario}: runs={runs} jobs={self.jobs} ({statuses}) frames={self.frames} "
            f"embedded={self.embedded} error_rows={self.errors} lost={self.lost} "
            f"duplicated={self.duplicated} stale_writes={self.stale_writes}{more}"
        )


def report(figures: Figures, scenario: str, runs: int = 1, **extra: object) -> str:
    """Print the figure line; also append it as JSON to $ARGUS_TEST_FAULTS_REPORT when set."""
    line = figures.line(scenario, runs, **extra)
    print(line)
    path = os.environ.get("ARGUS_TEST_FAULTS_REPORT")
    if path:
        record = {"scenario": scenario, "runs": runs, **dataclasses.asdict(figures), **extra}
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record, default=str) + "\n")
    return line


def count(connection: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> int:
    """The single integer `sql` selects (a count)."""
    with connection.cursor(row_factory=psycopg.rows.tuple_row) as cursor:
        row = cursor.execute(sql, params or None).fetchone()
    assert row is not None
    return int(row[0])


def _scalar(connection: psycopg.Connection[Any], sql: str) -> Any:
    row = connection.execute(sql).fetchone()
    assert row is not None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


def _rows(connection: psycopg.Connection[Any], sql: str) -> list[dict[str, Any]]:
    with connection.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute(sql).fetchall()


def _livez(daemon: Daemon, timeout: float = 60) -> tuple[int, str]:
    """/livez of a live daemon; one that was just (re)started gets time to bind its port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return daemon.get("/livez", timeout=5)
        except OSError as error:
            if time.monotonic() > deadline or not daemon.alive():
                return 0, f"no answer: {error}"
            time.sleep(0.2)


def check_invariants(
    connection: psycopg.Connection[Any],
    *,
    daemons: Sequence[Daemon] = (),
    finished: bool = True,
    expect_audit: bool = True,
) -> Figures:
    """Assert the invariants over the whole database; return the scenario's figures.

    `finished`: the scenario let every job reach a final state, so no job may still be
    queued or running. `expect_audit`: the write audit was installed before any write.
    """
    problems: list[str] = []

    def expect_none(what: str, sql: str) -> list[dict[str, Any]]:
        found = _rows(connection, sql)
        if found:
            problems.append(f"{what}: {len(found)}, e.g. {found[:3]}")
        return found

    duplicated = expect_none(
        "frames with more than one row for a model",
        "SELECT frame_id, model, count(*) AS n FROM argus.frame_embeddings "
        "GROUP BY frame_id, model HAVING count(*) > 1",
    )
    expect_none(
        "rows that are not exactly one of vector and error",
        "SELECT frame_id, model FROM argus.frame_embeddings "
        "WHERE (embedding IS NULL) = (error IS NULL)",
    )
    expect_none(
        "vectors that are not unit length or not the model's dimension",
        "SELECT e.frame_id, e.model, vector_norm(e.embedding) AS norm, "
        "vector_dims(e.embedding) AS dims FROM argus.frame_embeddings e "
        "LEFT JOIN argus.models m ON m.model = e.model "
        "WHERE e.embedding IS NOT NULL AND (abs(vector_norm(e.embedding) - 1) > 1e-3 "
        "OR m.dimension IS DISTINCT FROM vector_dims(e.embedding))",
    )
    expect_none(
        "empty error texts",
        "SELECT frame_id FROM argus.frame_embeddings WHERE error IS NOT NULL AND error = ''",
    )
    lost = expect_none(
        "frames of succeeded jobs without a row for the job's model",
        "SELECT j.id AS job, f.id AS frame FROM argus.embedding_jobs j "
        "JOIN argus.frames f ON f.video_id = j.video_id AND f.created_at <= j.started_at "
        "WHERE j.status = 'succeeded' AND NOT EXISTS (SELECT 1 FROM argus.frame_embeddings e "
        "WHERE e.frame_id = f.id AND e.model = j.model)",
    )
    expect_none(
        "succeeded jobs whose progress columns differ from the rows written",
        "SELECT j.id, j.frames_total, j.frames_done, j.frames_failed, r.done, r.failed "
        "FROM argus.embedding_jobs j CROSS JOIN LATERAL ("
        "  SELECT count(*) AS done, count(*) FILTER (WHERE e.error IS NOT NULL) AS failed"
        "  FROM argus.frame_embeddings e JOIN argus.frames f ON f.id = e.frame_id"
        "  WHERE f.video_id = j.video_id AND e.model = j.model"
        "    AND e.created_at <= j.finished_at) r "
        "WHERE j.status = 'succeeded' AND (j.frames_done <> j.frames_total "
        "OR j.frames_done <> r.done OR j.frames_failed <> r.failed)",
    )
    expect_none(
        "running jobs whose progress exceeds the rows written",
        "SELECT j.id, j.frames_done, r.done FROM argus.embedding_jobs j CROSS JOIN LATERAL ("
        "  SELECT count(*) AS done FROM argus.frame_embeddings e"
        "  JOIN argus.frames f ON f.id = e.frame_id"
        "  WHERE f.video_id = j.video_id AND e.model = j.model) r "
        "WHERE j.status = 'running' AND j.frames_done > r.done",
    )
    expect_none(
        "running jobs without a live lease",
        "SELECT id, worker_id, lease_expires_at FROM argus.embedding_jobs "
        "WHERE status = 'running' AND (lease_token IS NULL OR lease_expires_at IS NULL "
        "OR lease_expires_at < now())",
    )
    expect_none(
        "finished jobs still holding a lease or without finished_at",
        "SELECT id, status FROM argus.embedding_jobs WHERE status IN ('succeeded', 'failed') "
        "AND (lease_token IS NOT NULL OR lease_expires_at IS NOT NULL OR finished_at IS NULL)",
    )
    expect_none(
        "failed jobs without their error history or with attempts left",
        "SELECT id, attempts, max_attempts, last_error, errors FROM argus.embedding_jobs "
        "WHERE status = 'failed' AND (last_error IS NULL OR jsonb_array_length(errors) = 0 "
        "OR attempts < max_attempts)",
    )
    expect_none(
        "jobs past their max_attempts",
        "SELECT id, attempts, max_attempts FROM argus.embedding_jobs WHERE attempts > max_attempts",
    )
    expect_none(
        "videos with two queued or two running jobs for one model",
        "SELECT video_id, coalesce(model, '') AS model, status, count(*) "
        "FROM argus.embedding_jobs WHERE status IN ('queued', 'running') "
        "GROUP BY 1, 2, 3 HAVING count(*) > 1",
    )
    if finished:
        expect_none(
            "jobs not in a final state",
            "SELECT id, status, attempts, last_error FROM argus.embedding_jobs "
            "WHERE status IN ('queued', 'running')",
        )

    audited = _scalar(connection, "SELECT to_regclass('faults.writes') IS NOT NULL")
    stale: list[dict[str, Any]] = []
    audited_writes = 0
    if audited:
        stale = expect_none(
            "rows committed by a process that did not hold the job's lease",
            "SELECT frame_id, model, writer, at FROM faults.writes WHERE job_id IS NULL",
        )
        audited_writes = int(_scalar(connection, "SELECT count(*) FROM faults.writes"))
        expect_none(
            "frames written twice",
            "SELECT frame_id, model, count(*) FROM faults.writes GROUP BY 1, 2 HAVING count(*) > 1",
        )
    elif expect_audit:
        problems.append("the write audit was not installed")

    for daemon in daemons:
        if daemon.alive():
            status, body = _livez(daemon)
            if status != 200:
                problems.append(f"{daemon.name} is alive but /livez says {status}: {body}")

    statuses = {
        row["status"]: int(row["n"])
        for row in _rows(
            connection, "SELECT status, count(*) AS n FROM argus.embedding_jobs GROUP BY status"
        )
    }
    counts = _rows(
        connection,
        "SELECT (SELECT count(*) FROM argus.frames) AS frames, "
        "(SELECT count(*) FROM argus.frame_embeddings WHERE embedding IS NOT NULL) AS embedded, "
        "(SELECT count(*) FROM argus.frame_embeddings WHERE error IS NOT NULL) AS errors",
    )[0]
    figures = Figures(
        jobs=sum(statuses.values()),
        statuses=statuses,
        frames=int(counts["frames"]),
        embedded=int(counts["embedded"]),
        errors=int(counts["errors"]),
        lost=len(lost),
        duplicated=len(duplicated),
        stale_writes=len(stale),
        audited_writes=audited_writes,
    )
    assert not problems, "invariants violated:\n- " + "\n- ".join(problems)
    return figures
