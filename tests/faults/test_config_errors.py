"""Scenario 8: configuration and input errors at start-up, beyond tests/integration/test_cli.py.

Each case is a real `argus-embedder run` child; they run side by side, so the slowest
(an unreachable database, retried with backoff for ~15 s) sets the test's time.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest

from argus_embedder import errors
from tests.conftest import PostgresServer, S3Endpoint, scratch_database
from tests.faults import harness, invariants
from tests.faults.conftest import add_videos, all_final
from tests.faults.proxy import UnixForwarder


@pytest.fixture
def future_database_url(database_url: str) -> str:
    """A migrated database that a newer argus-embedder has migrated further."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO argus.schema_migrations (version, name) VALUES (999, 'future')"
        )
    return database_url


@pytest.fixture
def migrated_url(postgres_server: PostgresServer, template_database: str) -> Iterator[str]:
    """A second fresh migrated database."""
    with scratch_database(postgres_server, "argus_faults", template_database) as url:
        yield url


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port something else already listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_start_up_errors_exit_with_the_right_code_and_one_clear_line(
    migrated_url: str,
    empty_database_url: str,
    future_database_url: str,
    tiny_siglip_dir: Path,
    tmp_path: Path,
    held_port: int,
) -> None:
    corrupt = tmp_path / "corrupt-model"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_siglip_dir / "config.json").read_text())
    good = {
        "ARGUS_DATABASE_URL": migrated_url,
        "ARGUS_MODEL": str(tiny_siglip_dir),
        "ARGUS_DEVICE": "cpu",
        "ARGUS_METRICS_PORT": "0",
    }
    # (name, variables, exit code, message on stderr, most seconds)
    cases: list[tuple[str, dict[str, str], int, str, float]] = [
        (
            "database unreachable",
            {"ARGUS_DATABASE_URL": "postgresql://argus:pw@127.0.0.1:1/argus"},
            errors.EXIT_FAILURE,
            "cannot connect to PostgreSQL at postgresql://argus:***@127.0.0.1:1/argus",
            60,
        ),
        (
            "schema missing",
            {"ARGUS_DATABASE_URL": empty_database_url},
            errors.EXIT_CONFIG,
            "argus-embedder migrate",
            60,
        ),
        (
            "schema newer than the daemon",
            {"ARGUS_DATABASE_URL": future_database_url},
            errors.EXIT_CONFIG,
            "newer than this argus-embedder",
            60,
        ),
        ("lease of zero", {"ARGUS_LEASE_SECONDS": "0"}, errors.EXIT_CONFIG, "LEASE", 20),
        ("poll NaN", {"ARGUS_POLL_INTERVAL": "nan"}, errors.EXIT_CONFIG, "POLL_INTERVAL", 20),
        ("port text", {"ARGUS_METRICS_PORT": "http"}, errors.EXIT_CONFIG, "METRICS_PORT", 20),
        (
            "reconcile negative",
            {"ARGUS_RECONCILE_INTERVAL": "-5"},
            errors.EXIT_CONFIG,
            "RECONCILE_INTERVAL",
            20,
        ),
        (
            "decode processes negative",
            {"ARGUS_DECODE_PROCESSES": "-1"},
            errors.EXIT_CONFIG,
            "DECODE_PROCESSES",
            20,
        ),
        ("model corrupt", {"ARGUS_MODEL": str(corrupt)}, errors.EXIT_CONFIG, "corrupt-model", 60),
        (
            "model weightless",
            {"ARGUS_MODEL": str(no_weights)},
            errors.EXIT_CONFIG,
            "no-weights",
            60,
        ),
        (
            "metrics port taken",
            {"ARGUS_METRICS_PORT": str(held_port)},
            errors.EXIT_FAILURE,  # may be the old instance still stopping: let systemd retry
            str(held_port),
            60,
        ),
    ]
    started = time.monotonic()
    children = {
        name: subprocess.Popen(
            [sys.executable, "-m", "argus_embedder", "run", "--burst"],
            env={**os.environ, **good, **variables},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, variables, *_ in cases
    }
    finished: dict[str, float] = {}
    while len(finished) < len(children) and time.monotonic() - started < 120:
        for name, child in children.items():
            if name not in finished and child.poll() is not None:
                finished[name] = round(time.monotonic() - started, 1)
        time.sleep(0.05)
    outcomes = {}
    for name, _, code, message, most in cases:
        _, err = children[name].communicate(timeout=10)
        seconds = finished[name]
        outcomes[name] = (children[name].returncode, seconds)
        assert children[name].returncode == code, (name, err[-2000:])
        last = err.strip().splitlines()[-1]
        assert last.startswith("argus-embedder: error:") and message in last, (name, last)
        assert "Traceback" not in err, (name, err[-3000:])
        assert seconds < most, (name, seconds)
        if name == "database unreachable":
            delays = [float(d) for d in re.findall(r"retrying in ([\d.]+)s", err)]
            assert len(delays) >= 4, err  # retried, with a growing backoff, then gave up
            assert all(b > a for a, b in itertools.pairwise(delays)), delays
    print("FIGURE start-up-errors:", outcomes)


def test_daemon_started_before_its_database_waits_for_it_then_works(
    audited: psycopg.Connection[Any],
    database_url: str,
    s3: S3Endpoint,
    fleet: harness.Fleet,
) -> None:
    """After a host reboot the daemon may start first: it retries with backoff, and once
    the database answers (here: a port that starts forwarding to it) it gets to work."""
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    socket_path = f"{params['host']}/.s.PGSQL.{params.get('port') or 5432}"
    port = harness.free_port()
    tcp_url = psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=str(port))
    add_videos(audited, s3, 2, 6)
    daemon = fleet.start(ARGUS_DATABASE_URL=tcp_url)
    time.sleep(2.0)
    assert daemon.alive(), daemon.log()
    with UnixForwarder(port, socket_path):
        daemon.wait_ready()
        harness.wait_for(lambda: all_final(audited), 60, "the jobs")
        figures = invariants.check_invariants(audited, daemons=[daemon])
        assert figures.statuses == {"succeeded": 2}
        fleet.drain()
    assert "retrying in" in daemon.log()
    invariants.report(figures, "database-late-at-start")
