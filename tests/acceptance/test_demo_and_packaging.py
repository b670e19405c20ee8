"""What a newcomer runs first (`demo`), and the wheel carrying its SQL."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import psycopg
import pytest

from tests import support

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
    env: dict[str, str]  # the newcomer's environment: a fresh home, no ARGUS_* variable


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "argus_embedder", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


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
    for name in [name for name in env if name.startswith("ARGUS_")]:
        del env[name]
    env.pop("XDG_RUNTIME_DIR", None)
    started = time.monotonic()
    result = run_cli(env, "demo")
    return DemoRun(result, time.monotonic() - started, env)


def test_demo_runs_end_to_end_on_an_embedded_postgres(demo_run: DemoRun) -> None:
    result, elapsed = demo_run.result, demo_run.elapsed
    print(f"demo wall time: {elapsed:.1f}s")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "TINY RANDOM SigLIP" in out and "meaningless" in out
    assert "succeeded 2" in out
    # Its own search, as moments: both videos, each with time ranges at 1 frame/s.
    _, shown = out.split('search "a red car on a road" --by video', 1)
    video_line = r"^ +\d\. -?[0-9.]+  video (demo-video-[12]) \(project demo\)$"
    videos = re.findall(video_line, shown, re.M)
    assert sorted(videos) == ["demo-video-1", "demo-video-2"], out
    ranges = [
        (int(m[0]) * 60 + int(m[1]), int(m[2]) * 60 + int(m[3]))
        for m in re.findall(r"^ +(\d\d):(\d\d)\N{EN DASH}(\d\d):(\d\d)  frame \d+  ", shown, re.M)
    ]
    assert len(ranges) >= 2 and all(0 <= start <= end < 18 for start, end in ranges), out
    # ...and what to run next, which the test below runs.
    assert "argus-embedder status\n" in out
    assert 'argus-embedder search "a red car on a road" --by video\n' in out
    assert "argus-embedder serve        then open http://127.0.0.1:8478/" in out
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


@pytest.mark.timeout(600)  # six CLI processes, each loading torch: minutes on 2 busy cores
def test_after_the_demo_status_search_and_serve_work_with_nothing_set(demo_run: DemoRun) -> None:
    """Issue 19: the demo's next commands, as it prints them, with no ARGUS_* variable:
    the same embedded database and, offline, the demo's tiny model (said plainly). A
    second demo first: it adds nothing twice and fails on nothing."""
    assert demo_run.result.returncode == 0, demo_run.result.stdout + demo_run.result.stderr
    env = demo_run.env
    again = run_cli(env, "demo")
    assert again.returncode == 0, again.stdout + again.stderr

    status = run_cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    [coverage] = json.loads(status.stdout)["coverage"]
    assert coverage["model"].endswith("demo-tiny-siglip")
    assert (coverage["frames"], coverage["with_row"], coverage["failed"]) == (36, 36, 0)

    search = run_cli(env, "search", "a dog", "--by", "video", "--json")
    assert search.returncode == 0, search.stderr
    assert "TINY RANDOM" in search.stderr and "meaningless for quality" in search.stderr
    videos = json.loads(search.stdout)
    assert sorted(video["video_id"] for video in videos) == ["demo-video-1", "demo-video-2"]
    assert all(moment["start_ms"] is not None for video in videos for moment in video["moments"])
    frames = run_cli(env, "search", "a dog", "--limit", "3")
    assert frames.returncode == 0, frames.stderr
    assert len(frames.stdout.splitlines()) == 3 and "demo-video-" in frames.stdout

    with support.serve_process(env=env) as served:
        assert "TINY RANDOM" in "".join(served.said)
        url = f"http://127.0.0.1:{served.port}/search?q=a+dog&by=video"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            assert json.loads(response.read()) == videos


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
        page = "argus_embedder/commands/search_page/"
        for name in ("index.html", "search.css", "search.js"):
            assert page + name in names, name  # serve's page, package data
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
