"""Secrets never reach logs, `status`, metrics, or error rows.

A password is planted in ARGUS_DATABASE_URL (the embedded server trusts local
connections, so any password works) and a secret in AWS_SECRET_ACCESS_KEY; then a real
daemon runs at DEBUG through good frames, bad frames and an S3 outage, the CLI reports
and fails, and every byte of output and of the database is searched for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from typing import Any

import psycopg
import psycopg.conninfo
import pytest

from argus_embedder import settings
from tests import support
from tests.conftest import S3Endpoint
from tests.faults import harness, invariants
from tests.faults.conftest import all_final, small_jpeg
from tests.faults.proxy import Fault, FaultProxy

PASSWORD = "hunter2-PLANTED-db-password"
AWS_SECRET = "PLANTED-aws-secret-access-key-7f3e"


def with_password(url: str) -> str:
    """The URL as an operator writes it: postgresql://user:password@/db?host=/socket/dir."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    host = urllib.parse.quote(str(params["host"]), safe="")
    port = params.get("port") or 5432
    return (
        f"postgresql://{params['user']}:{urllib.parse.quote(PASSWORD)}@/{params['dbname']}"
        f"?host={host}&port={port}"
    )


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://argus:{PASSWORD}@db.example/argus",
        f"postgres://argus:{PASSWORD}@[::1]:5432/argus?sslmode=require",
        f"postgresql://argus:{PASSWORD}@h1:5432,h2:5433/argus",
        f"postgresql://argus:p@{PASSWORD}@db.example/argus",  # a raw @ in the password
        f"postgresql://argus@db.example/argus?password={PASSWORD}&sslmode=require",
        f"postgresql://argus@db.example/argus?PASSWORD={PASSWORD}",
        f"host=db.example password={PASSWORD} user=argus",
        f"host=db.example password = {PASSWORD} user=argus",
        f"host=db.example password='{PASSWORD} with spaces' user=argus",
        f"host=db.example password='it\\'s {PASSWORD}' user=argus",
        f"host=db.example sslpassword={PASSWORD}",
    ],
)
def test_redact_url_hides_every_spelling_of_a_password(url: str) -> None:
    redacted = settings.redact_url(url)
    assert redacted is not None and "***" in redacted
    assert "PLANTED" not in redacted and "spaces" not in redacted
    assert "db.example" in redacted or "h1" in redacted or "::1" in redacted
    assert PASSWORD not in repr(settings.Settings(database_url=url))


def test_planted_secrets_never_leave_the_process(
    audited: psycopg.Connection[Any],
    s3: S3Endpoint,
    fleet: harness.Fleet,
    proxy: FaultProxy,
    database_url: str,
) -> None:
    secret_url = with_password(database_url)
    with psycopg.connect(secret_url):  # the planted URL really works
        pass
    uris = [s3.put(f"s/{i}.jpg", small_jpeg(i)) for i in range(4)]
    uris += [f"s3://{s3.bucket}/s/missing.jpg", s3.put("s/html.jpg", b"<html>401</html>")]
    env = {"ARGUS_DATABASE_URL": secret_url, "AWS_SECRET_ACCESS_KEY": AWS_SECRET}
    # An S3 outage for the whole first attempt of the job: failures, retries, logs.
    proxy.inject(Fault("error", times=10**6, status=503, code="ServiceUnavailable"))
    daemon = fleet.start("--log-level", "DEBUG", ARGUS_S3_ENDPOINT_URL=proxy.url, **env)
    daemon.wait_ready()
    support.add_video(audited, "secrets", uris)
    harness.wait_for(
        lambda: "transient" in (support.job(audited, 1)["last_error"] or ""), 60, "a failure"
    )
    proxy.clear()
    harness.wait_for(lambda: all_final(audited), 60, "the job's retry")
    scraped = [daemon.get(path)[1] for path in ("/metrics", "/livez", "/readyz")]
    cli_env = {**os.environ, **env, "ARGUS_MODEL": fleet.base_env["ARGUS_MODEL"]}
    # The database unreachable for one of them: connection error messages too.
    down = {**cli_env, "ARGUS_DATABASE_URL": f"postgresql://argus:{PASSWORD}@127.0.0.1:1/x"}
    runs = [
        (cli_env, ["--log-level", "DEBUG", "status"]),
        (cli_env, ["status", "--json"]),
        (cli_env, ["search", "a car", "--json"]),
        (cli_env, ["enqueue", "no-such-video"]),
        (down, ["status"]),
    ]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "argus_embedder", *argv],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for child_env, argv in runs
    ]
    outputs = ["".join(child.communicate(timeout=120)) for child in children]
    assert [child.returncode for child in children] == [0, 0, 0, 1, 1], outputs
    fleet.drain()

    stored = audited.execute(
        "SELECT coalesce(string_agg(error, ' '), '') AS text FROM argus.frame_embeddings "
        "UNION ALL SELECT coalesce(string_agg(concat_ws(' ', worker_id, last_error, "
        "errors::text), ' '), '') FROM argus.embedding_jobs"
    ).fetchall()
    extra = audited.execute(
        "SELECT coalesce(string_agg(t::text, ' '), '') AS text FROM argus.workers t "
        "UNION ALL SELECT coalesce(string_agg(p::text, ' '), '') FROM argus.fleet_passes p"
    ).fetchall()
    everything = {
        "daemon logs": "\n".join(d.log() for d in fleet.daemons),
        "http": "\n".join(scraped),
        "cli": "\n".join(outputs),
        "database": " ".join(row["text"] for row in [*stored, *extra]),
    }
    assert "***" in everything["cli"]  # the masked URL is shown, so the search means something
    assert json.loads(outputs[1])["jobs"]["succeeded"] >= 1
    for where, text in everything.items():
        for secret in (PASSWORD, urllib.parse.quote(PASSWORD), AWS_SECRET, "PLANTED"):
            assert secret not in text, f"{secret!r} leaked into {where}"
    figures = invariants.check_invariants(audited)
    assert figures.statuses == {"succeeded": 1} and figures.errors == 2
    invariants.report(
        figures,
        "secrets",
        bytes_searched=sum(len(text) for text in everything.values()),
        leaks=0,
    )
