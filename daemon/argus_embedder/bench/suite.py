"""`argus-embedder bench`: the figures of DESIGN §7, each a ratio measured in one run.

Everything runs for real: JPEG frames 1280x720 (quality 90, textured) served over HTTP by
moto's S3 server, a scratch database `argus_bench` on ARGUS_DATABASE_URL's server (else the
embedded PostgreSQL), and the daemon's own Worker for every end-to-end number. A machine
shared with others makes absolute rates noisy, so each figure divides two rates measured in
the same run on the same data, each side run at least twice in A B B A order and counted by
its best run; the absolute rates are reported beside them as context.

`--quick` shrinks every scenario (CI runs it); the full run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from argus_embedder import db, errors
from argus_embedder.bench import (
    cpu_meter,
    dataset,
    decode_speed,
    fairness,
    first_draft,
    peer_queue,
    search_growth,
    status_growth,
    vector_writes,
)
from argus_embedder.gateways import index
from argus_embedder.pipeline import embedder, preparing, worker
from argus_embedder.pipeline.storage import Storage
from argus_embedder.services import compactor, indexer, periodic
from argus_embedder.settings import Settings, redact_url
from argus_embedder.testing import tinymodel

# DESIGN §7: the figures' keys, in the order of its table, and their goals.
GOALS: dict[str, tuple[str, float]] = {
    "e2e_over_model_only": (">=", 0.90),
    "e2e_over_decode_ceiling": (">=", 0.70),
    "e2e_over_naive": (">=", 5.0),
    "small_jobs_over_large_job": (">=", 0.8),
    "claims_over_peer": (">=", 1.0),
    "vector_writes_per_second": (">=", 20_000.0),
    "rss_growth_mb": ("<", 50.0),
    "e2e_indexed_over_unindexed": (">=", 0.90),
    "search_recall_at_10": (">=", 0.95),
    "fair_start_wait_ratio": ("<=", 2.0),
    "search_p95_growth": ("<=", 1.5),
    "decode_speedup_over_stock": (">=", 2.0),
    "status_growth": ("<=", 1.5),
    "gpu_e2e_frames_per_second": (">=", 5_000.0),  # on an H100/H200; null with no GPU
}
# What `bench --only` can name: Bench's scenario methods, in run order.
SCENARIOS = (
    "claims",
    "vectors",
    "decode_speed",
    "tiny_pipeline",
    "fairness",
    "index_kinds",
    "rss",
    "model_only",
    "search_growth",
    "status_growth",
)
_WITH_TINY = frozenset({"tiny_pipeline", "fairness", "rss"})  # scenarios given the tiny model
GROWTH_RECALL = 0.95  # search_p95_growth counts only with recall@10 this high at both sizes
MIB = 1024 * 1024
FAIR_BACKLOG = 200  # fair_start_wait_ratio's backlog, as DESIGN §7 defines it


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much work each scenario does."""

    name: str
    distinct_frames: int  # distinct JPEGs in S3; videos cycle through them
    base_batch_size: int | None  # B/16; None: the device's automatic batch size
    base_batches: int  # B/16 frames per side, in full batches, over two runs
    large_job: int  # frames of the one large job; also the decode-ceiling and e2e frames
    small_jobs: int
    small_job_frames: int
    naive_frames: int
    index_frames: int  # per index kind, over two alternating rounds
    index_segment_rows: int  # small, so segments seal (and get built) during the run
    claims: int  # empty jobs per queue library
    claim_rounds: int  # 2: argus, pgqueuer, pgqueuer, argus (each with half the jobs)
    claim_workers: int
    rss_warm_up: int
    rss_frames: int
    rss_job_frames: int
    vectors: int
    other_index_kinds: tuple[str, ...]  # searched too, for the trade-offs (not a figure)
    growth_vectors: tuple[int, int]  # search_p95_growth: 1x and 10x; 1x fills one segment
    decode_frames: int = 48  # decode_speedup_over_stock: noisy 720p JPEGs per side and run
    # status_growth: frames (each with its row) at 1x and 10x, and queued jobs at each
    status_frames: tuple[int, int] = (1_000_000, 10_000_000)
    status_queued: tuple[int, int] = (10_000, 100_000)


# DESIGN §7's sizes for the full run. The 1M corpus takes ~4 minutes here (1.1M
# vectors written with the appends and rebuilds beside them, ~2 minutes of catch-up):
# the whole full run took 8 minutes. Earlier full runs with it took 12-15 minutes, on a
# slower hour and likely with unit publishes that autovacuum starved (migration 0010).
# (hnsw's bulk builds, 0.9k-3.2k rows/s, would take 5-18 minutes for 1M vectors alone:
# search_growth.KIND is ivfflat.)
GROWTH_DESIGN = (100_000, 1_000_000)

FULL = Plan(
    name="full",
    distinct_frames=120,
    base_batch_size=None,
    base_batches=4,
    large_job=1000,
    small_jobs=200,
    small_job_frames=5,
    naive_frames=200,
    index_frames=1000,
    index_segment_rows=250,
    claims=4000,
    claim_rounds=2,
    claim_workers=4,
    rss_warm_up=1000,
    rss_frames=10_000,
    rss_job_frames=500,
    vectors=100_000,
    other_index_kinds=("ivfflat", "none"),
    growth_vectors=GROWTH_DESIGN,
)
QUICK = Plan(
    name="quick",
    distinct_frames=24,
    base_batch_size=2,
    base_batches=2,
    large_job=200,
    small_jobs=40,
    small_job_frames=5,
    naive_frames=48,
    index_frames=200,
    index_segment_rows=50,
    claims=400,
    claim_rounds=1,
    claim_workers=4,
    rss_warm_up=200,
    rss_frames=600,
    rss_job_frames=200,
    vectors=10_000,
    other_index_kinds=(),
    growth_vectors=(10_000, 100_000),
    decode_frames=16,
    status_frames=(100_000, 1_000_000),
)


def main(
    config: Settings,
    *,
    quick: bool = False,
    as_json: bool = False,
    only: Sequence[str] = (),
) -> int:
    """Run every scenario (or those named in `only`) and print the figures (a table, or
    one JSON object)."""
    plan = QUICK if quick else FULL
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        raise errors.ConfigError(
            f"bench --only: no scenario {', '.join(unknown)}; one of {', '.join(SCENARIOS)}"
        )
    stdout = sys.stdout
    # Whatever a library prints goes to stderr with the progress; stdout gets the report.
    with contextlib.redirect_stdout(sys.stderr), _quiet_loggers():
        report = run(config, plan, only)
    if as_json:
        print(json.dumps(report, indent=2), file=stdout)
    else:
        print(render(report), file=stdout)
    return 0


def run(config: Settings, plan: Plan, only: Sequence[str] = ()) -> dict[str, Any]:
    """Set up the world, run the scenarios, and return the report."""
    started = time.perf_counter()
    load_start = os.getloadavg()
    progress = _Progress(sys.stderr)
    with contextlib.ExitStack() as stack:
        admin_url = _admin_url(config, progress)
        url = stack.enter_context(dataset.scratch_database(admin_url))
        s3 = stack.enter_context(dataset.s3_endpoint())
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="argus-bench-")))
        with progress.step("frames", "drawing and uploading textured 1280x720 JPEGs"):
            frames = dataset.textured_frames(plan.distinct_frames)
            uris = dataset.upload(s3.url, frames)
        bench = Bench(config, plan, World(url, s3, workdir, frames, uris, admin_url), progress)
        bench.run_all(only)
    context = bench.context
    context["machine"] = _machine(load_start)
    context["database"] = {
        **bench.versions,
        "server": "ARGUS_DATABASE_URL" if config.database_url else "embedded",
        "url": redact_url(admin_url),
        "scratch_database": dataset.DATABASE,
    }
    context["durations_seconds"] = {**progress.durations, "total": time.perf_counter() - started}
    return {
        "figures": {key: bench.figures.get(key) for key in GOALS},
        "goals": {key: f"{op} {value:g}" for key, (op, value) in GOALS.items()},
        "context": context,
    }


@dataclasses.dataclass(frozen=True)
class World:
    """What every scenario shares: the database, the S3 server, the frames in it."""

    url: str
    s3: dataset.S3Server
    workdir: Path
    frames: list[bytes]
    uris: list[str]
    admin_url: str  # the server's, for scenarios with databases of their own


class Bench:
    """The scenarios, sharing one database, one S3 endpoint and the same frames."""

    def __init__(self, config: Settings, plan: Plan, world: World, progress: _Progress) -> None:
        self.config = config
        self.plan = plan
        self.url = world.url
        self.admin_url = world.admin_url
        self.endpoint = world.s3.url
        self.workdir = world.workdir
        self.frames = world.frames
        self.uris = world.uris
        self.progress = progress
        self.figures: dict[str, float | None] = {}
        self.measurements: dict[str, dict[str, Any]] = {}
        self.context: dict[str, Any] = {
            "plan": plan.name,
            "frames": {
                "size": list(dataset.FRAME_SIZE),
                "jpeg_quality": dataset.JPEG_QUALITY,
                "distinct": len(self.frames),
                "mean_bytes": round(sum(map(len, self.frames)) / len(self.frames)),
            },
            "s3": "moto ThreadedMotoServer over HTTP on loopback, in a child process",
            "measurements": self.measurements,
        }
        self.versions = dataset.server_versions(self.url)
        with db.connect(self.url, autocommit=True) as connection:
            postmaster = cpu_meter.postmaster_pid(connection)
        self.meter = cpu_meter.Meter(world.s3.pid, postmaster)
        self._videos = 0

    def run_all(self, only: Sequence[str] = ()) -> None:
        """Every scenario in SCENARIOS' order, or those named in `only`.

        Claims first (before the bulk vectors leave autovacuum and checkpoints behind),
        then the vectors while frame ids still start at 1, so segments align; the search
        growth last: it writes the most rows, and the autovacuum they leave behind must
        not run beside another scenario's measurement.
        """
        tiny: embedder.Embedder | None = None
        for name in SCENARIOS:
            if only and name not in only:
                continue
            scenario = getattr(self, name)
            if name in _WITH_TINY:
                tiny = tiny or self._load_tiny("siglip-tiny")
                scenario(tiny)
                continue
            if tiny is not None and name != "index_kinds":
                tiny = None  # freed before B/16 loads
                gc.collect()
            scenario()

    # --- figures ----------------------------------------------------------------

    def vectors(self) -> None:
        """vector_writes_per_second and search_recall_at_10."""
        with self.progress.step("vectors", f"{self.plan.vectors:,} clustered 768-d vectors"):
            result = vector_writes.run(
                self.url, self.plan.vectors, other_kinds=self.plan.other_index_kinds
            )
        self.figures["vector_writes_per_second"] = result.writes_per_second
        self.figures["search_recall_at_10"] = result.recall_at_10
        self.measurements["vectors"] = dataclasses.asdict(result)
        self.progress.say(
            f"writes {result.writes_per_second:,.0f} rows/s, recall@10 "
            f"{result.recall_at_10:.3f}, search {result.search_ms_median:.0f} ms median"
        )

    def search_growth(self) -> None:
        """search_p95_growth: search's p95 over 10x the vectors / over 1x, the vectors
        written through the write path with the background index work (builds, merges)
        running beside the writes; recall@10 at both sizes reported beside it."""
        small, large = self.plan.growth_vectors
        with self.progress.step("search growth", f"{small:,} then {large:,} clustered vectors"):
            result = search_growth.run(self.url, [small, large], segment_rows=small)
        first, last = result.checkpoints[0], result.checkpoints[-1]
        self.figures["search_p95_growth"] = search_growth.p95_growth(result)
        self.measurements["search_growth"] = {
            "vectors": [small, large],
            "design_vectors": list(GROWTH_DESIGN) if self.plan is FULL else [small, large],
            "compaction": result.maintenance.compaction,
            "search_recall_at_10_small": first.recall_at_10,
            "search_recall_at_10_large": last.recall_at_10,
            "recall_goal": GROWTH_RECALL,
            **dataclasses.asdict(result),
        }
        self.progress.say(
            f"p95 {first.search_ms_p95:.1f} ms over {small:,} ({first.segments} segment(s)), "
            f"{last.search_ms_p95:.1f} ms over {large:,} ({last.segments}); recall@10 "
            f"{first.recall_at_10:.3f} / {last.recall_at_10:.3f}, compaction "
            f"{'on' if result.maintenance.compaction else 'absent'}"
        )

    def status_growth(self) -> None:
        """status_growth: `status --json` wall time over 10x the database ÷ over 1x (two
        databases of their own, frames each with the model's row, queued jobs over 100
        projects); its start-up (`status --help`) timed beside it."""
        frames, queued = self.plan.status_frames, self.plan.status_queued
        with self.progress.step(
            "status growth", f"{frames[0]:,} then {frames[1]:,} embedded frames"
        ):
            result = status_growth.run(self.admin_url, frames, queued)
        self.figures["status_growth"] = result.growth
        self.measurements["status_growth"] = {
            "design_frames": [1_000_000, 10_000_000],
            **dataclasses.asdict(result),
        }
        small, large = result.sizes
        self.progress.say(
            f"status --json {statistics.median(small.status_seconds):.3f} s over "
            f"{small.frames:,} frames, {statistics.median(large.status_seconds):.3f} s over "
            f"{large.frames:,}; start-up {statistics.median(small.startup_seconds):.3f} s"
        )

    def claims(self) -> None:
        """claims_over_peer: empty jobs claimed and completed by 4 workers, ours vs pgqueuer.

        With two rounds the order is argus, pgqueuer, pgqueuer, argus; each side counts its
        best round.
        """
        plan = self.plan
        order = ["argus", "pgqueuer"]
        order += list(reversed(order)) if plan.claim_rounds == 2 else []
        jobs = plan.claims // plan.claim_rounds
        drains: dict[str, list[peer_queue.Drain]] = {"argus": [], "pgqueuer": []}
        peer: peer_queue.Peer | None = None
        for side in order:
            if side == "pgqueuer" and peer is not None and peer.drain is None:
                continue  # unavailable: said once
            with self.progress.step(
                f"claims {side}", f"{jobs:,} empty jobs, {plan.claim_workers} workers"
            ):
                if side == "argus":
                    drain = peer_queue.argus(self.url, jobs, plan.claim_workers)
                    if drain.jobs != jobs:
                        raise dataset.BenchError(
                            f"argus finished {drain.jobs} of {jobs} empty jobs"
                        )
                    drains[side].append(drain)
                else:
                    peer = peer_queue.pgqueuer(self.url, jobs, plan.claim_workers)
                    if peer.drain is not None:
                        drains[side].append(peer.drain)
        assert peer is not None
        ours = peer_queue.best(drains["argus"])
        theirs = peer_queue.best(drains["pgqueuer"]) if drains["pgqueuer"] else None
        self.figures["claims_over_peer"] = None if theirs is None else ours / theirs
        self.context["peer"] = {
            "library": peer.library,
            "version": peer.version,
            "reason": peer.reason,
        }
        self.measurements["claims"] = {
            "jobs": plan.claims,
            "workers": plan.claim_workers,
            "argus_jobs_per_second": ours,
            "pgqueuer_jobs_per_second": theirs,
        }
        pgqueuer = peer.reason if theirs is None else f"{theirs:,.0f} jobs/s"
        self.progress.say(f"argus {ours:,.0f} jobs/s, pgqueuer {pgqueuer}")

    def tiny_pipeline(self, tiny: embedder.Embedder) -> None:
        """e2e_over_decode_ceiling, small_jobs_over_large_job and e2e_over_naive (tiny model).

        Each runs twice, in palindromic order (ceiling, large, small, naive, naive, small,
        large, ceiling), so a load that drifts while the bench runs weighs on all alike.
        """
        plan = self.plan
        large_job = plan.large_job
        small_jobs = [plan.small_job_frames] * plan.small_jobs
        half_ceiling, half_naive = large_job // 2, plan.naive_frames // 2
        with self.progress.step("warm-up", f"1 job x {tiny.batch_size} frames, not measured"):
            self._e2e(tiny, [tiny.batch_size])  # first connections, threads, code paths
        with embedder.quiet_transformers():
            naive = first_draft.NaiveLoop(
                Path(tiny.model), model=tiny.model, url=self.url, s3_endpoint=self.endpoint
            )
        runs: dict[str, Callable[[], _Measured]] = {
            "ceiling": lambda: self._decode_ceiling(tiny, half_ceiling),
            "large job": lambda: self._e2e(tiny, [large_job]),
            "small jobs": lambda: self._e2e(tiny, small_jobs),
            "naive": lambda: self._naive(naive, tiny, half_naive),
        }
        frames = {
            "ceiling": half_ceiling,
            "large job": large_job,
            "small jobs": sum(small_jobs),
            "naive": half_naive,
        }
        what = {
            "ceiling": f"{half_ceiling} frames: download+decode+resize only, no model, no DB",
            "large job": f"1 job x {large_job} frames",
            "small jobs": f"{plan.small_jobs} jobs x {plan.small_job_frames} frames",
            "naive": f"{half_naive} frames through the first-draft loop",
        }
        tally = _Tally()
        with naive:
            naive.warm_up()
            for name in [*runs, *reversed(runs)]:
                with self.progress.step(name, what[name]):
                    tally.add(name, frames[name], runs[name]())
        large, ceiling = tally.rate("large job"), tally.rate("ceiling")
        small, slow = tally.rate("small jobs"), tally.rate("naive")
        self.figures["e2e_over_decode_ceiling"] = large / ceiling
        self.figures["small_jobs_over_large_job"] = small / large
        self.figures["e2e_over_naive"] = large / slow
        self.context["tiny_model"] = _describe(tiny)
        self.measurements["tiny_pipeline"] = {
            "e2e_large_job_frames_per_second": large,
            "decode_ceiling_frames_per_second": ceiling,
            "decode_pool": _decode_pool(self.config.decode_processes),
            "e2e_small_jobs_frames_per_second": small,
            "naive_frames_per_second": slow,
            # The most e2e_over_naive can be here: the worker cannot outrun downloading
            # and decoding alone on the same cores.
            "decode_ceiling_over_naive": ceiling / slow,
            "naive_batch_size": first_draft.BATCH_SIZE,
            "frames": tally.frames,
            "runs_frames_per_second": tally.report(),
            "cpu_ms_per_frame": tally.cpu_ms_per_frame(),
            "large_job_frames": large_job,
            "small_jobs": plan.small_jobs,
            "small_job_frames": plan.small_job_frames,
        }
        self.progress.say(
            f"e2e {large:.0f} frames/s, ceiling {ceiling:.0f}, small jobs {small:.0f}, "
            f"naive {slow:.1f}"
        )

    def fairness(self, tiny: embedder.Embedder) -> None:
        """fair_start_wait_ratio: one job of a new project behind another's 200-job backlog,
        with the real Worker; each backlog job has two batches of frames."""
        frames_per_job = 2 * tiny.batch_size
        with self.progress.step(
            "fairness",
            f"1 job behind another project's {FAIR_BACKLOG} jobs x {frames_per_job} frames",
        ):
            result = fairness.run(
                self.url,
                self.uris,
                lambda: self._worker(tiny),
                model=tiny.model,
                frames_per_job=frames_per_job,
                backlog=FAIR_BACKLOG,
            )
        self.figures["fair_start_wait_ratio"] = result.ratio
        self.measurements["fairness"] = dataclasses.asdict(result)
        self.progress.say(
            f"newcomer claimed {result.start_wait_seconds:.2f} s after its enqueue; a backlog "
            f"job runs {result.backlog_job_seconds:.2f} s"
        )

    def index_kinds(self) -> None:
        """e2e_indexed_over_unindexed: the same tiny model registered with hnsw, then none.

        Each kind runs twice, in the order hnsw, none, none, hnsw. The segment indexing runs
        beside the worker (as in the daemon) and builds segments as they seal, so with hnsw
        the bulk builds compete with embedding for this machine's cores, as they would for
        a database server's.
        """
        plan = self.plan
        kinds = ("hnsw", "none")
        models = {kind: self._load_tiny(f"siglip-tiny-{kind}") for kind in kinds}
        for kind, model in models.items():
            with db.connect(self.url, autocommit=True) as connection:
                index.register(
                    connection,
                    model.model,
                    model.dimension,
                    kind,
                    segment_rows=plan.index_segment_rows,
                )
        half = plan.index_frames // 2
        tally = _Tally()
        for kind in [*kinds, *reversed(kinds)]:
            model = models[kind]
            # The daemon's indexing beside the worker, as `run` has it, checking every half
            # second instead of every CHECK_SECONDS: these runs last seconds, not hours.
            indexing = dataclasses.replace(indexer.task(model.model), interval=0.5, first_delay=0)
            compacting = dataclasses.replace(
                compactor.task(model.model), interval=0.5, first_delay=0
            )
            with (
                self.progress.step(f"index {kind}", f"1 job x {half} frames"),
                periodic.running(self.url, [indexing], stop=threading.Event()),
                periodic.running(self.url, [compacting], stop=threading.Event()),
            ):
                tally.add(kind, half, self._e2e(model, [half]))
        built = self._segments_indexed(models["hnsw"].model)
        indexed, unindexed = tally.rate("hnsw"), tally.rate("none")
        self.figures["e2e_indexed_over_unindexed"] = indexed / unindexed
        self.measurements["index_kinds"] = {
            "hnsw_frames_per_second": indexed,
            "none_frames_per_second": unindexed,
            "frames_per_kind": 2 * half,
            "segment_rows": plan.index_segment_rows,
            "hnsw_segments_indexed": built,
            "runs_frames_per_second": tally.report(),
            "cpu_ms_per_frame": tally.cpu_ms_per_frame(),
        }
        self.progress.say(f"hnsw {indexed:.0f} frames/s, none {unindexed:.0f} frames/s")

    def rss(self, tiny: embedder.Embedder) -> None:
        """rss_growth_mb: one long-lived Worker, measured after a warm-up."""
        plan = self.plan
        job = plan.rss_job_frames
        with self.progress.step(
            "rss", f"{plan.rss_warm_up} frames warm-up, then {plan.rss_frames:,} measured"
        ):
            warm_up = self._add_jobs(
                tiny.model, [job] * max(1, plan.rss_warm_up // job), enqueue=True
            )
            measured = self._add_jobs(tiny.model, [job] * max(1, plan.rss_frames // job))
            with self._worker(tiny) as loop, _PeakRss(self.meter) as peak:
                loop.run(burst=True)
                self._check(tiny.model, warm_up)
                baseline = self._settled_rss()
                peak.reset()
                self._enqueue(tiny.model, measured)
                watch = _Stopwatch(self.meter)
                loop.run(burst=True)
                run = watch.stop()
                final = self._settled_rss()
            self._check(tiny.model, measured)
        count = sum(len(uris) for uris in measured.values())
        self.figures["rss_growth_mb"] = (final - baseline) / MIB
        self.measurements["rss"] = {
            "frames": count,
            "jobs": len(measured),
            "baseline_mb": baseline / MIB,
            "final_mb": final / MIB,
            "peak_mb": peak.peak / MIB,
            "frames_per_second": count / run.seconds,
            "cpu_ms_per_frame": _Tally.of("worker", count, run).cpu_ms_per_frame()["worker"],
        }
        self.progress.say(
            f"RSS {baseline / MIB:.0f} -> {final / MIB:.0f} MB (peak {peak.peak / MIB:.0f}) "
            f"over {count:,} frames"
        )

    def _settled_rss(self) -> int:
        gc.collect()
        return self.meter.worker_rss()

    def decode_speed(self) -> None:
        """decode_speedup_over_stock: one core, the daemon's decode + resize vs the stock path."""
        frames = decode_speed.noisy_frames(self.plan.decode_frames)
        with self.progress.step(
            "decode speed", f"{len(frames)} noisy 720p JPEGs, daemon vs stock, one core"
        ):
            result = decode_speed.run(self._base_b16(), frames)
        self.figures["decode_speedup_over_stock"] = result.speedup
        self.measurements["decode_speed"] = dataclasses.asdict(result)
        self.progress.say(
            f"daemon {result.daemon_frames_per_second:.0f} frames/s, stock "
            f"{result.stock_frames_per_second:.0f} frames/s per core"
        )

    def model_only(self) -> None:
        """e2e_over_model_only: a real-size SigLIP B/16 end to end vs its bare forward.

        Each side runs twice on the same number of frames, forward, e2e, e2e, forward.
        """
        with (
            self.progress.step("base model", "building SigLIP B/16 (random weights)"),
            embedder.quiet_transformers(),
        ):
            directory = self._base_b16()
        base = embedder.load_embedder(
            str(directory), self.config.device, self.config.batch_size or self.plan.base_batch_size
        )
        base.warm_up()
        batch = base.batch_size
        half = max(1, self.plan.base_batches // 2) * batch  # whole batches per run
        # Decoded before the timing, on the device too where it decodes (ARGUS_DECODE).
        frames = [base.prepare(data) for data in dataset.cycle(self.frames, half)]
        prepared = base.finish_decoding(frames)

        def forward() -> _Measured:
            watch = _Stopwatch(self.meter)
            for start in range(0, half, batch):
                base.embed(prepared[start : start + batch])
            return watch.stop()

        runs: dict[str, Callable[[], _Measured]] = {
            "forward": forward,
            "e2e": lambda: self._e2e(base, [half]),
        }
        what = {
            "forward": f"{half} frames, forward only, batch {batch}",
            "e2e": f"1 job x {half} frames, batch {batch}",
        }
        tally = _Tally()
        for name in ("forward", "e2e", "e2e", "forward"):
            with self.progress.step(f"base {name}", what[name]):
                tally.add(name, half, runs[name]())
        e2e, forward_only = tally.rate("e2e"), tally.rate("forward")
        self.figures["e2e_over_model_only"] = e2e / forward_only
        # DESIGN §7: the same e2e on a CUDA device (decoding as ARGUS_DECODE says); null on CPU.
        on_gpu = base.device.startswith("cuda")
        self.figures["gpu_e2e_frames_per_second"] = e2e if on_gpu else None
        self.context["base_model"] = _describe(base)
        self.measurements["base_model"] = {
            "e2e_frames_per_second": e2e,
            "model_only_frames_per_second": forward_only,
            "frames": tally.frames,
            "runs_frames_per_second": tally.report(),
            "cpu_ms_per_frame": tally.cpu_ms_per_frame(),
        }
        self.progress.say(f"e2e {e2e:.2f} frames/s, forward only {forward_only:.2f} frames/s")

    # --- helpers ----------------------------------------------------------------

    def _base_b16(self) -> Path:
        """SigLIP 2 B/16 224's architecture with random weights, written once per run."""
        directory = self.workdir / "siglip2-base-patch16-224-random"
        if not (directory / "config.json").exists():
            with embedder.quiet_transformers():
                tinymodel.build_base_b16(directory)
        return directory

    def _load_tiny(self, name: str) -> embedder.Embedder:
        with embedder.quiet_transformers():
            directory = tinymodel.build(self.workdir / name, family="siglip")
        model = embedder.load_embedder(str(directory), self.config.device, self.config.batch_size)
        model.warm_up()
        return model

    def _settings(self, model: embedder.Embedder) -> Settings:
        return dataclasses.replace(
            self.config,
            database_url=self.url,
            model=model.model,
            batch_size=model.batch_size,
            s3_bucket=dataset.BUCKET,
            s3_endpoint_url=self.endpoint,
            metrics_port=0,
            poll_interval=0.1,
            reconcile_interval=0,
            worker_id="argus-bench",
        )

    def _add_jobs(
        self, model: str, sizes: Sequence[int], *, enqueue: bool = False
    ) -> dict[str, list[str]]:
        """New videos of `sizes` frames (their frame rows; jobs only with `enqueue`)."""
        videos = {}
        for size in sizes:
            self._videos += 1
            videos[f"bench-{self._videos:05d}"] = dataset.cycle(self.uris, size, start=self._videos)
        with db.connect(self.url, autocommit=True) as connection:
            dataset.add_videos(connection, videos, model=model, enqueue=enqueue)
        return videos

    def _enqueue(self, model: str, videos: dict[str, list[str]]) -> None:
        with db.connect(self.url, autocommit=True) as connection:
            dataset.add_jobs(connection, videos, model=model)

    def _check(self, model: str, videos: dict[str, list[str]]) -> None:
        with db.connect(self.url, autocommit=True) as connection:
            dataset.check_outcome(
                connection, model, list(videos), sum(len(uris) for uris in videos.values())
            )

    def _e2e(self, model: embedder.Embedder, sizes: Sequence[int]) -> _Measured:
        """The real Worker embedding new jobs of `sizes` frames (burst mode)."""
        videos = self._add_jobs(model.model, sizes, enqueue=True)
        with self._worker(model) as loop:
            watch = _Stopwatch(self.meter)
            loop.run(burst=True)
            measured = watch.stop()
        self._check(model.model, videos)
        return measured

    def _worker(self, model: embedder.Embedder) -> worker.Worker:
        """The daemon's worker as `run` builds it (decode processes included)."""
        return worker.Worker(
            self._settings(model),
            self.url,
            model,
            decode_processes=preparing.processes(self.config.decode_processes),
        )

    def _decode_ceiling(self, model: embedder.Embedder, frames: int) -> _Measured:
        """Download, decode and resize `frames` frames with the worker's own decode pool
        (processes, as the daemon runs it); no model, no DB."""
        storage = Storage(self._settings(model))
        uris = dataset.cycle(self.uris, frames, start=frames)
        preparer = preparing.start(
            storage,
            model.recipe.prepare,
            processes=preparing.processes(self.config.decode_processes),
            threads=worker.default_threads(),
        )
        try:
            for future in preparer.submit(uris[: 2 * preparing.CHUNK_FRAMES]):
                future.result()  # the processes start outside the measurement
            watch = _Stopwatch(self.meter)
            for future in preparer.submit(uris):
                if isinstance(future.result().output, Exception):
                    raise dataset.BenchError(f"decode ceiling: {future.result().output}")
            return watch.stop()
        finally:
            preparer.close()

    def _naive(
        self, loop: first_draft.NaiveLoop, model: embedder.Embedder, frames: int
    ) -> _Measured:
        """The first-draft loop over a new video of `frames` frames."""
        videos = self._add_jobs(model.model, [frames])
        with db.connect(self.url, autocommit=True) as connection:
            # The draft wrote straight into the table; the segments it needs exist first.
            registered = index.register(connection, model.model, model.dimension)
            ids = [
                int(row["id"])
                for video_id in videos
                for row in connection.execute(
                    db.queries()["bench_frame_ids"], {"video_id": video_id}
                )
            ]
            index.Segments(registered).ensure(connection, ids)
        watch = _Stopwatch(self.meter)
        loop.run(list(videos))
        measured = watch.stop()
        self._check(model.model, videos)
        return measured

    def _segments_indexed(self, model: str) -> int:
        with db.connect(self.url, autocommit=True) as connection:
            rows = connection.execute(db.queries()["segment_report"], {"model": model}).fetchall()
        return sum(1 for row in rows if row["index_name"] is not None)


# --- the report ------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    """The figures as a table, with their goals and the rates behind them."""
    context = report["context"]
    machine = context["machine"]
    lines = [
        f"argus-embedder bench ({context['plan']} run) on {machine['cpu']}, "
        f"{machine['usable_cores']} core(s), device "
        f"{context.get('base_model', {}).get('device', 'n/a')}, "
        f"PostgreSQL {context['database']['postgres']} + pgvector "
        f"{context['database']['pgvector']}, {context['durations_seconds']['total']:.0f} s",
        "",
        f"{'figure':<28} {'value':>12}  {'goal':<10} verdict",
    ]
    for key, value in report["figures"].items():
        goal = report["goals"][key]
        lines.append(f"{key:<28} {_format(value):>12}  {goal:<10} {_verdict(key, value, context)}")
    lines += ["", "rates behind them (absolute numbers are context: this machine is shared):"]
    measured = context["measurements"]
    if "decode_speed" in measured:
        speed = measured["decode_speed"]
        lines.append(
            f"  decode + resize on one core: daemon {speed['daemon_frames_per_second']:.0f} "
            f"frames/s, stock {speed['stock_frames_per_second']:.0f} frames/s "
            f"({speed['frames']} JPEGs of {speed['mean_bytes'] / 1000:.0f} KB)"
        )
    if set(measured) >= {"base_model", "tiny_pipeline", "index_kinds", "claims", "fairness"}:
        lines += [f"  {line}" for line in _details(context)]
    else:
        lines.append("  (a partial run, bench --only: --json has its measurements)")
    return "\n".join(lines)


def _cpu(milliseconds: dict[str, float | None]) -> str:
    names = {
        "bench": "this process",
        "decode": "decode processes",
        "s3": "S3 server",
        "postgres": "PostgreSQL",
    }
    return ", ".join(
        f"{names[part]} {'?' if value is None else f'{value:.1f}'} ms"
        for part, value in milliseconds.items()
    )


def _format(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"


def _verdict(key: str, value: float | None, context: dict[str, Any]) -> str:
    if value is None and key == "gpu_e2e_frames_per_second":
        return "no figure: no CUDA device"
    if value is None:
        reason = context.get("peer", {}).get("reason", "not run (bench --only)")
        return f"no figure: {reason}"
    op, goal = GOALS[key]
    met = {">=": value >= goal, "<=": value <= goal, "<": value < goal}[op]
    if key == "search_p95_growth":
        growth = context["measurements"]["search_growth"]
        recalls = [growth["search_recall_at_10_small"], growth["search_recall_at_10_large"]]
        if min(recalls) < GROWTH_RECALL:
            return f"MISSED (recall@10 {recalls[0]:.3f} / {recalls[1]:.3f})"
    return "met" if met else "MISSED"


def _details(context: dict[str, Any]) -> list[str]:
    measured = context["measurements"]
    base, tiny = measured["base_model"], measured["tiny_pipeline"]
    kinds, claims = measured["index_kinds"], measured["claims"]
    vectors, rss = measured["vectors"], measured["rss"]
    fair = measured["fairness"]
    peer = claims["pgqueuer_jobs_per_second"]
    return [
        f"B/16 batch {context['base_model']['batch_size']}: e2e "
        f"{base['e2e_frames_per_second']:.2f} frames/s, forward only "
        f"{base['model_only_frames_per_second']:.2f} frames/s ({base['frames']['e2e']} "
        f"frames e2e, {base['frames']['forward']} forward only)",
        f"  CPU per frame e2e: {_cpu(base['cpu_ms_per_frame']['e2e'])}",
        f"tiny model: e2e {tiny['e2e_large_job_frames_per_second']:.0f} frames/s, decode "
        f"ceiling {tiny['decode_ceiling_frames_per_second']:.0f} frames/s "
        f"({tiny['decode_pool']}), naive "
        f"{tiny['naive_frames_per_second']:.1f} frames/s; ceiling / naive "
        f"{tiny['decode_ceiling_over_naive']:.2f} (the most e2e_over_naive can be here)",
        *[
            f"  CPU per frame, {name}: {_cpu(cpu)}"
            for name, cpu in tiny["cpu_ms_per_frame"].items()
        ],
        f"tiny model: {tiny['small_jobs']} jobs x {tiny['small_job_frames']} frames "
        f"{tiny['e2e_small_jobs_frames_per_second']:.0f} frames/s vs 1 x "
        f"{tiny['large_job_frames']} frames {tiny['e2e_large_job_frames_per_second']:.0f}",
        f"index kinds: hnsw {kinds['hnsw_frames_per_second']:.0f} frames/s "
        f"({kinds['hnsw_segments_indexed']} segments built meanwhile), none "
        f"{kinds['none_frames_per_second']:.0f} frames/s",
        f"claims, {claims['workers']} workers: argus {claims['argus_jobs_per_second']:,.0f} "
        f"jobs/s, pgqueuer " + (f"{peer:,.0f} jobs/s" if peer is not None else "n/a"),
        f"vectors: {vectors['vectors']:,} x 768-d, {vectors['segments_indexed']} segments "
        f"indexed in {vectors['index_build_seconds']:.1f} s (index "
        f"{vectors['index_bytes'] / MIB:.0f} MB, table {vectors['table_bytes'] / MIB:.0f} MB), "
        f"{vectors['late_vectors']:,} "
        f"written after (late writes {vectors['late_writes_per_second']:,.0f} rows/s), "
        f"search {vectors['search_ms_median']:.0f} ms median / "
        f"{vectors['search_ms_p95']:.0f} ms p95",
        *[
            f"  same vectors re-indexed {kind['kind']}: {kind['segments_indexed']} segments in "
            f"{kind['build_seconds']:.1f} s, index {kind['index_bytes'] / MIB:.0f} MB, recall@10 "
            f"{kind['recall_at_10']:.3f}, search {kind['search_ms_median']:.0f} ms median"
            for kind in vectors["other_kinds"]
        ],
        f"fairness: a new project's job claimed {fair['start_wait_seconds']:.2f} s after its "
        f"enqueue behind {fair['backlog_jobs']} jobs x {fair['frames_per_job']} frames of "
        f"another ({fair['claimed_while_waiting']} of those claimed meanwhile); a backlog job "
        f"runs {fair['backlog_job_seconds']:.2f} s (mean of {fair['backlog_jobs_finished']})",
        f"RSS: {rss['baseline_mb']:.0f} MB after warm-up, {rss['final_mb']:.0f} MB after "
        f"{rss['frames']:,} frames (peak {rss['peak_mb']:.0f} MB, "
        f"{rss['frames_per_second']:.0f} frames/s)",
        *_growth_details(measured["search_growth"]),
    ]


def _growth_details(growth: dict[str, Any]) -> list[str]:
    maintenance = growth["maintenance"]
    lines = [
        f"search growth, segments of {growth['segment_rows']:,} ids, compaction "
        f"{'on' if growth['compaction'] else 'absent (no services.compactor)'}: "
        f"{growth['kind']} units: {maintenance['segments_built']} segment builds or appends by "
        f"the indexer, {maintenance['merges']} compactor steps, in {maintenance['seconds']:.0f} s"
    ]
    lines += [
        f"  {point['vectors']:,} vectors in {point['segments']} segment(s): search "
        f"{point['search_ms_p50']:.1f} ms p50 / {point['search_ms_p95']:.1f} ms p95 alternating "
        f"with the other size ({point['alone_ms_p50']:.1f} / {point['alone_ms_p95']:.1f} ms "
        f"alone), recall@10 {point['recall_at_10']:.3f} (after "
        f"{len(point['warm_up_ms_p50'])} untimed passes, p50 "
        f"{' → '.join(f'{ms:.1f}' for ms in point['warm_up_ms_p50'])} ms)"
        for point in growth["checkpoints"]
    ]
    return lines


# --- small helpers ---------------------------------------------------------------


class _Progress:
    """Progress lines on stderr, and how long each step took."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.durations: dict[str, float] = {}

    def say(self, text: str) -> None:
        print(f"bench:   {text}", file=self._stream, flush=True)

    @contextlib.contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        print(f"bench: {name}: {what}", file=self._stream, flush=True)
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.durations[name] = self.durations.get(name, 0.0) + seconds
        self.say(f"{name}: {seconds:.1f} s")


def _admin_url(config: Settings, progress: _Progress) -> str:
    if config.database_url:
        progress.say(f"PostgreSQL at {redact_url(config.database_url)}")
        return config.database_url
    progress.say(f"embedded PostgreSQL in {db.embedded_data_dir()}")
    return db.embedded_url(quiet=True)


def _machine(load_start: tuple[float, float, float]) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_start": [round(value, 2) for value in load_start],
        "load_average_end": [round(value, 2) for value in os.getloadavg()],
    }


def _describe(model: embedder.Embedder) -> dict[str, Any]:
    return {
        "model": Path(model.model).name,
        "dimension": model.dimension,
        "batch_size": model.batch_size,
        "device": model.device,
        "preprocessing": model.preprocessing,
    }


def _decode_pool(setting: int | None) -> str:
    """The worker's download+decode pool, as the daemon sizes it."""
    return preparing.describe(preparing.processes(setting), worker.default_threads())


@dataclasses.dataclass(frozen=True)
class _Measured:
    seconds: float
    cpu: cpu_meter.Sample


class _Stopwatch:
    """Wall time and CPU time (this process, S3, PostgreSQL) from creation to stop()."""

    def __init__(self, meter: cpu_meter.Meter) -> None:
        self._meter = meter
        self._cpu = meter.sample()
        self._started = time.perf_counter()

    def stop(self) -> _Measured:
        seconds = time.perf_counter() - self._started
        return _Measured(seconds, self._meter.sample().minus(self._cpu))


class _Tally:
    """Runs by name: frames, seconds and CPU of each repetition.

    A side's rate is its best run's: noise on a shared machine only ever slows a run
    down, so the fastest repetition is the least disturbed estimate (as timeit takes
    the minimum), and each side of a figure gets the same treatment.
    """

    def __init__(self) -> None:
        self._runs: dict[str, list[tuple[int, _Measured]]] = {}

    @classmethod
    def of(cls, name: str, frames: int, measured: _Measured) -> _Tally:
        tally = cls()
        tally.add(name, frames, measured)
        return tally

    def add(self, name: str, frames: int, measured: _Measured) -> None:
        self._runs.setdefault(name, []).append((frames, measured))

    def rate(self, name: str) -> float:
        """Frames per second of `name`'s best run."""
        return max(self.rates(name))

    def rates(self, name: str) -> list[float]:
        return [frames / measured.seconds for frames, measured in self._runs[name]]

    @property
    def frames(self) -> dict[str, int]:
        return {name: sum(frames for frames, _ in runs) for name, runs in self._runs.items()}

    def report(self) -> dict[str, list[float]]:
        """Every run's frames per second, by name, in the order they ran."""
        return {name: self.rates(name) for name in self._runs}

    def cpu_ms_per_frame(self) -> dict[str, dict[str, float | None]]:
        """Per name, over all its runs: CPU milliseconds per frame by process."""
        report: dict[str, dict[str, float | None]] = {}
        for name, runs in self._runs.items():
            frames = sum(count for count, _ in runs)
            report[name] = {
                part: _per_frame([getattr(measured.cpu, part) for _, measured in runs], frames)
                for part in ("bench", "decode", "s3", "postgres")
            }
        return report


def _per_frame(seconds: list[float | None], frames: int) -> float | None:
    if any(value is None for value in seconds):
        return None
    return 1000 * sum(value for value in seconds if value is not None) / frames


class _PeakRss:
    """Samples RSS in the background; `peak` is the highest seen since `reset()`."""

    def __init__(self, meter: cpu_meter.Meter, interval: float = 0.2) -> None:
        self.peak = 0
        self._meter = meter
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-rss", daemon=True)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        self.peak = self._meter.worker_rss()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._meter.worker_rss())


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    """Per-job INFO lines would drown the progress; warnings still show."""
    names = ("argus_embedder", "pgqueuer", "moto", "werkzeug", "transformers")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
