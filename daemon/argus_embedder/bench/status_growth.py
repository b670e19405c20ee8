"""status_growth (DESIGN §7): `status --json`'s wall time over 10x the database ÷ over 1x.

Two scratch databases on the same server, `argus_bench_status_1x` and `_10x`, each
holding `frames` frames (videos of FRAMES_PER_VIDEO, over PROJECTS projects), every
one with the bench model's embedding row and the succeeded job that embedded its
video, plus `queued` queued jobs over the same projects, each for a new video of
QUEUED_FRAMES frames still without rows. The rows are generated in the server (the
vectors are one unit vector of the tiny bench model's dimension, DIMENSION: status
never reads a vector, and the row count and table size are what it could pay for).
Both databases are then vacuumed and analysed, as autovacuum leaves a table that
has stopped growing.

`argus-embedder status --json` then runs as an operator runs it, a process of its
own, against each database in turn (1x, 10x, 10x, 1x, ...), after one untimed run
each; the figure divides the median wall times. `argus-embedder status --help` (the
interpreter, the imports and the argument parsing, no database) is timed beside each
run, so the report also gives what status itself costs above its start-up.

`python -m argus_embedder.bench.status_growth --frames 1000000 --queued 10000`
builds and times the same at any size against ARGUS_DATABASE_URL's server. With
`--cold` (the embedded server only: it restarts it) each database is also timed once
cold, as after an operator's restart: the server restarted and, where this process may,
the operating system's page cache dropped, before the one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from argus_embedder import db
from argus_embedder.bench import dataset
from argus_embedder.gateways import index

MODEL = "argus-bench/status-32"
DIMENSION = 32  # the tiny bench model's (testing.tinymodel.TINY_HIDDEN)
FRAMES_PER_VIDEO = 100
QUEUED_FRAMES = 5  # frames of each queued job's video, none embedded yet
PROJECTS = 100
CHUNK_VIDEOS = 10_000  # videos' frames (and rows) generated per statement
ROUNDS = 5  # timed runs per database, alternating
DATABASES = ("argus_bench_status_1x", "argus_bench_status_10x")


@dataclasses.dataclass(frozen=True)
class Size:
    """One database: its frames (each with a row) and its queued jobs."""

    frames: int
    queued: int
    load_seconds: float
    status_seconds: list[float]  # `status --json` wall times, a process each
    startup_seconds: list[float]  # `status --help` wall times: start-up without the database
    estimated: list[str]  # the report's figures shown as estimates
    cold_seconds: float | None  # one run after a restart (`--cold`), else None


@dataclasses.dataclass(frozen=True)
class Result:
    growth: float  # the figure: median status wall 10x ÷ 1x
    above_startup_growth: float  # the same for the medians less start-up's median
    sizes: list[Size]


def run(
    admin_url: str,
    frames: Sequence[int],
    queued: Sequence[int],
    *,
    rounds: int = ROUNDS,
    restart: Callable[[], None] | None = None,
) -> Result:
    """Build both databases on `admin_url`'s server, time status over each, drop them.
    With `restart` (it restarts the server), each is then timed once more, cold."""
    with contextlib.ExitStack() as stack:
        urls, loads = [], []
        for name, frame_count, queued_count in zip(DATABASES, frames, queued, strict=True):
            url = stack.enter_context(dataset.scratch_database(admin_url, name))
            started = time.perf_counter()
            load(url, frame_count, queued_count)
            loads.append(time.perf_counter() - started)
            urls.append(url)
        walls: list[list[float]] = [[] for _ in urls]
        startups: list[list[float]] = [[] for _ in urls]
        reports: list[dict[str, Any]] = [{} for _ in urls]
        for number in range(rounds + 1):  # the first round is untimed: warm-up
            order = list(range(len(urls)))
            if number % 2:
                order.reverse()
            for which in order:
                wall, report = status_wall(urls[which])
                startup = status_wall(urls[which], "--help")[0]
                if number:
                    walls[which].append(wall)
                    startups[which].append(startup)
                reports[which] = report
        colds: list[float | None] = [None for _ in urls]
        if restart is not None:
            for which, url in enumerate(urls):
                restart()
                colds[which] = status_wall(url)[0]
    sizes = [
        Size(
            frames=frame_count,
            queued=queued_count,
            load_seconds=loads[which],
            status_seconds=walls[which],
            startup_seconds=startups[which],
            estimated=estimated_figures(reports[which]),
            cold_seconds=colds[which],
        )
        for which, (frame_count, queued_count) in enumerate(zip(frames, queued, strict=True))
    ]
    return Result(
        growth=statistics.median(walls[-1]) / statistics.median(walls[0]),
        above_startup_growth=_above(walls[-1], startups[-1]) / _above(walls[0], startups[0]),
        sizes=sizes,
    )


def load(url: str, frames: int, queued: int) -> None:
    """`frames` embedded frames with their videos' succeeded jobs, and `queued` queued jobs
    for videos of QUEUED_FRAMES frames without rows; then VACUUM (ANALYZE)."""
    q = db.queries()
    videos = max(1, frames // FRAMES_PER_VIDEO)
    vector = np.ones(DIMENSION, dtype=np.float32) / np.sqrt(DIMENSION)
    with db.connect(url, autocommit=True) as connection:
        model = index.register(connection, MODEL, DIMENSION, "none")
        segments = index.Segments(model)
        for first in range(0, videos, CHUNK_VIDEOS):
            count = min(CHUNK_VIDEOS, videos - first)
            with connection.transaction():
                row = connection.execute(q["bench_status_frame_bounds"]).fetchone()
                assert row is not None
                low = int(row["last"]) + 1
                connection.execute(
                    q["bench_status_frames"],
                    {
                        "prefix": "embedded-",
                        "first": first,
                        "videos": count,
                        "frames": FRAMES_PER_VIDEO,
                        "projects": PROJECTS,
                    },
                )
                high = low + count * FRAMES_PER_VIDEO
                segments.ensure(connection, range(low, high, model.segment_rows))
                segments.ensure(connection, [high - 1])
                connection.execute(
                    q["bench_status_embeddings"],
                    {"model": MODEL, "vector": vector, "low": low, "high": high},
                )
                connection.execute(
                    q["bench_status_jobs"],
                    {
                        "prefix": "embedded-",
                        "first": first,
                        "videos": count,
                        "projects": PROJECTS,
                        "model": MODEL,
                        "state": "succeeded",
                        "frames": FRAMES_PER_VIDEO,
                    },
                )
        for first in range(0, queued, CHUNK_VIDEOS * 10):
            count = min(CHUNK_VIDEOS * 10, queued - first)
            parameters = {
                "prefix": "queued-",
                "first": first,
                "videos": count,
                "frames": QUEUED_FRAMES,
                "projects": PROJECTS,
                "model": MODEL,
                "state": "queued",
            }
            with connection.transaction():
                connection.execute(q["bench_status_frames"], parameters)
                connection.execute(q["bench_status_jobs"], parameters)
        connection.execute(q["bench_vacuum_analyze"])


def _above(walls: Sequence[float], startups: Sequence[float]) -> float:
    """Median wall time less median start-up (at least a millisecond)."""
    return max(statistics.median(walls) - statistics.median(startups), 0.001)


def status_wall(url: str, flag: str = "--json") -> tuple[float, dict[str, Any]]:
    """`argus-embedder status FLAG` as its own process: wall seconds and, for --json,
    the report."""
    environment = {
        **os.environ,
        "ARGUS_DATABASE_URL": url,
        "ARGUS_MODEL": MODEL,
        "HF_HUB_OFFLINE": "1",
    }
    environment.pop("ARGUS_READ_DATABASE_URL", None)
    started = time.perf_counter()
    completed = subprocess.run(  # noqa: S603 - our own interpreter and command
        [sys.executable, "-m", "argus_embedder", "status", flag],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise dataset.BenchError(
            f"status --json exited {completed.returncode}: {completed.stderr[-2000:]}"
        )
    report: dict[str, Any] = json.loads(completed.stdout) if flag == "--json" else {}
    return seconds, report


def estimated_figures(report: dict[str, Any]) -> list[str]:
    """Which of a status report's figures are estimates (their `estimated` marks)."""
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key.endswith("estimated") and item is True:
                    found.append(f"{path}.{key}".lstrip("."))
                elif key.endswith("estimated") and isinstance(item, dict):
                    found.extend(
                        f"{path}.{key}.{name}".lstrip(".") for name, on in item.items() if on
                    )
                else:
                    walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for number, item in enumerate(value):
                walk(item, f"{path}[{number}]")

    walk(report, "")
    return found


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def restart_cold() -> None:
    """Restart the embedded server and drop the page cache where this process may (root
    on Linux); where it may not, "cold" means PostgreSQL's buffers only."""
    db.restart_embedded()
    os.sync()
    with contextlib.suppress(OSError):
        DROP_CACHES.write_text("3\n", encoding="ascii")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="frames at 1x (10x: ten times)")
    parser.add_argument("--queued", type=int, default=10_000, help="queued jobs at 1x")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument(
        "--cold", action="store_true", help="also time one run each after a restart"
    )
    args = parser.parse_args(argv)
    external = os.environ.get("ARGUS_DATABASE_URL")
    if args.cold and external:
        parser.error("--cold restarts the embedded server: unset ARGUS_DATABASE_URL")
    url = external or db.embedded_url(quiet=True)
    result = run(
        url,
        [args.frames, args.frames * 10],
        [args.queued, args.queued * 10],
        rounds=args.rounds,
        restart=restart_cold if args.cold else None,
    )
    print(json.dumps(dataclasses.asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
