"""What a newcomer runs first (`demo`), and the wheel carrying its SQL."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]


# Python warnings (RuntimeDirWarning, FutureWarning...), transformers' log lines, load
# reports and progress bars: what a library prints on its own.
LIBRARY_NOISE = (
    r"\w+Warning\b|warnings\.warn|torchvision|falling back|^\[transformers\]|LOAD REPORT"
    r"|Loading weights|it/s\]"
)


@dataclasses.dataclass(frozen=True)
class DemoRun:
    result: subprocess.CompletedProcess[str]
    elapsed: float


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """`argus-embedder demo` as a newcomer runs it: a fresh home, no hub, and (as in a
    container or a `su` shell) no XDG_RUNTIME_DIR."""
    home = tmp_path_factory.mktemp("demo-home")
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("ARGUS_DATABASE_URL", None)
    env.pop("XDG_RUNTIME_DIR", None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "argus_embedder", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return DemoRun(result, time.monotonic() - started)


def test_demo_runs_end_to_end_on_an_embedded_postgres(demo_run: DemoRun) -> None:
    result, elapsed = demo_run.result, demo_run.elapsed
    print(f"demo wall time: {elapsed:.1f}s")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "TINY RANDOM SigLIP" in out and "meaningless" in out
    assert "succeeded 2" in out
    assert 'search "a red car on a road": top 5 frames' in out
    assert out.count(" demo-video-") >= 5
    assert "Traceback" not in result.stderr
    assert elapsed < 120


def test_demo_shows_our_messages_not_library_warnings_regression_bug13(
    demo_run: DemoRun,
) -> None:
    """Regression (issue 16 bug 13): without XDG_RUNTIME_DIR the demo printed
    platformdirs' RuntimeDirWarning (from embedded-postgres), and transformers' warnings
    ("requires torchvision ... falling back", config checks) could reach the terminal."""
    assert demo_run.result.returncode == 0, demo_run.result.stdout + demo_run.result.stderr
    lines = (demo_run.result.stderr + demo_run.result.stdout).splitlines()
    noise = [
        line
        for line in lines
        if re.search(LIBRARY_NOISE, line) or ("WARNING" in line and "argus_embedder" not in line)
    ]
    assert noise == [], "\n".join(lines)


def test_built_wheel_ships_the_sql_and_migrates(tmp_path: Path, empty_database_url: str) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("argus_embedder-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "argus_embedder/sql/queries/jobs.sql" in names
        assert "argus_embedder/sql/migrations/0001_initial.sql" in names
        site = tmp_path / "site"
        archive.extractall(site)
    probe = (
        "import sys, argus_embedder\n"
        "from argus_embedder import db\n"
        f"assert argus_embedder.__file__.startswith({str(site)!r}), argus_embedder.__file__\n"
        "print(len(db.migrate(sys.argv[1])))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, empty_database_url],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 1
    with psycopg.connect(empty_database_url) as connection:
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'argus'"
            )
        }
    assert {"frames", "frame_embeddings", "embedding_jobs", "schema_migrations"} <= tables
