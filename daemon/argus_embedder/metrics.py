"""Every Prometheus metric the daemon exports, declared once, on one registry.

A leaf of the core: the pipeline and the services count into it and it imports
nothing of ours, so no arrow runs from the loop up into the runtime, which only
exposes REGISTRY over HTTP (runtime/health.py). `serve` declares its own series
(commands/serve_metrics.py), none of them here.

Names carry the `argus_embedder_` prefix and base units (seconds, bytes).
Labels take only values from the small fixed sets below: never a job id, a
video id, a URI or anything secret, so a scrape stays the same size however
many videos pass through.

Every label value is created at import, so each series exists (at 0) from the
first scrape: `rate()` and the alert rules then see a zero instead of nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# `_created` samples double the series count and no dashboard or alert uses them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

JOB_OUTCOMES = ("succeeded", "failed", "cancelled", "released", "lease_lost", "retried")
FRAME_OUTCOMES = ("embedded", "failed")
STAGES = ("download", "decode", "infer", "write")
QUEUE_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
CUDA_MEMORY_KINDS = ("allocated", "reserved", "total")

# Per-batch stage times: ~1 ms (a GPU forward of a small batch, a COPY of a few
# rows) up to a minute (a CPU forward of a large batch, a slow S3 download).
STAGE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0,
)  # fmt: skip
# Queue wait: from instant pickup to a backlog of a day.
QUEUE_WAIT_BUCKETS = (
    0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
)  # fmt: skip
# Whole jobs: a few frames on a GPU to a long video on a CPU.
JOB_BUCKETS = (
    0.25, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
)  # fmt: skip
BATCH_BUCKETS = tuple(float(2**power) for power in range(11))  # 1, 2, 4 … 1024

REGISTRY = CollectorRegistry()
prometheus_client.ProcessCollector(registry=REGISTRY)
prometheus_client.PlatformCollector(registry=REGISTRY)
prometheus_client.GCCollector(registry=REGISTRY)

BUILD_INFO = Gauge(
    "argus_embedder_build_info",
    "Always 1; labels say which version runs which model on which device.",
    ["version", "model", "device"],
    registry=REGISTRY,
)
READY = Gauge(
    "argus_embedder_ready",
    "1 when /readyz passes (model warm, database reachable, not draining), else 0.",
    registry=REGISTRY,
)
JOBS_CLAIMED = Counter(
    "argus_embedder_jobs_claimed_total",
    "Jobs this worker claimed (new or reclaimed after an expired lease).",
    registry=REGISTRY,
)
JOBS_COMPLETED = Counter(
    "argus_embedder_jobs_completed_total",
    "Jobs this worker stopped working on, by how they ended.",
    ["outcome"],
    registry=REGISTRY,
)
FRAMES_PROCESSED = Counter(
    "argus_embedder_frames_processed_total",
    "Frames written: embedded (a vector) or failed (an error row that is never retried).",
    ["outcome"],
    registry=REGISTRY,
)
JOB_QUEUE_WAIT = Histogram(
    "argus_embedder_job_queue_wait_seconds",
    "Seconds from a job's run_at to its claim.",
    buckets=QUEUE_WAIT_BUCKETS,
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "argus_embedder_job_duration_seconds",
    "Seconds from claim to the job's last write, whatever the outcome.",
    buckets=JOB_BUCKETS,
    registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "argus_embedder_stage_duration_seconds",
    "Seconds one batch spent in a pipeline stage.",
    ["stage"],
    buckets=STAGE_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "argus_embedder_batch_size",
    "Frames per forward batch.",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "argus_embedder_last_success_timestamp_seconds",
    "Unix time of the last job this worker finished as succeeded.",
    registry=REGISTRY,
)
LOOP_HEARTBEAT = Gauge(
    "argus_embedder_loop_heartbeat_timestamp_seconds",
    "Unix time the worker loop last went round (idle waits included); 0 before the first.",
    registry=REGISTRY,
)
MODEL_LOAD = Gauge(
    "argus_embedder_model_load_seconds",
    "Seconds the last model load and warm-up took.",
    registry=REGISTRY,
)
CUDA_MEMORY = Gauge(
    "argus_embedder_cuda_memory_bytes",
    "CUDA memory of this worker's device: allocated and reserved by torch, total on the device.",
    ["kind"],
    registry=REGISTRY,
)
CUDA_OOM = Counter(
    "argus_embedder_cuda_oom_total",
    "CUDA out-of-memory errors; each one halves the batch size and retries the batch.",
    registry=REGISTRY,
)
QUEUE_JOBS = Gauge(
    "argus_embedder_queue_jobs",
    "Jobs in the database queue by status (cached; whole queue, not this worker).",
    ["state"],
    registry=REGISTRY,
)
QUEUE_OLDEST_AGE = Gauge(
    "argus_embedder_queue_oldest_queued_age_seconds",
    "Age of the oldest claimable queued job (now - run_at); 0 when none waits.",
    registry=REGISTRY,
)
QUEUE_FRAMES_WAITING = Gauge(
    "argus_embedder_queue_frames_waiting",
    "Frames of queued and running jobs not finished yet (cached).",
    registry=REGISTRY,
)
RECONCILER_MISSING = Gauge(
    "argus_embedder_reconciler_missing_frames",
    "Frames without a row for the configured model, found by the last reconciler pass.",
    registry=REGISTRY,
)
RECONCILER_ENQUEUED = Counter(
    "argus_embedder_reconciler_jobs_enqueued_total",
    "Jobs the reconciler enqueued for videos nobody had enqueued.",
    registry=REGISTRY,
)
DB_ERRORS = Counter(
    "argus_embedder_db_errors_total",
    "Database operations that failed with a transient error and were retried.",
    registry=REGISTRY,
)
S3_RETRIES = Counter(
    "argus_embedder_s3_retries_total",
    "S3 requests retried after a transient error (5xx, timeout, connection reset).",
    registry=REGISTRY,
)

for _outcome in JOB_OUTCOMES:
    JOBS_COMPLETED.labels(_outcome)
for _outcome in FRAME_OUTCOMES:
    FRAMES_PROCESSED.labels(_outcome)
for _stage in STAGES:
    STAGE_DURATION.labels(_stage)
for _state in QUEUE_STATES:
    QUEUE_JOBS.labels(_state)
for _kind in CUDA_MEMORY_KINDS:
    CUDA_MEMORY.labels(_kind)


def set_build_info(version: str, model: str, device: str) -> None:
    """Publish the one build-info series, replacing any earlier one (e.g. after a fallback)."""
    BUILD_INFO.clear()
    BUILD_INFO.labels(version=version, model=model, device=device).set(1)


def set_queue_stats(
    counts: Mapping[str, int], oldest_queued_age: float | None, frames_waiting: int
) -> None:
    """Publish one snapshot of the queue: job counts by status (absent ones are 0) and backlog.

    Raises ValueError on a status outside QUEUE_STATES, so a new status cannot
    quietly add a series that no dashboard shows.
    """
    unknown = set(counts) - set(QUEUE_STATES)
    if unknown:
        raise ValueError(f"unknown queue states: {sorted(unknown)}")
    for state in QUEUE_STATES:
        QUEUE_JOBS.labels(state).set(counts.get(state, 0))
    QUEUE_OLDEST_AGE.set(max(oldest_queued_age or 0.0, 0.0))
    QUEUE_FRAMES_WAITING.set(frames_waiting)


def set_cuda_memory(allocated: int, reserved: int, total: int) -> None:
    """Publish the device's memory figures, in bytes."""
    CUDA_MEMORY.labels("allocated").set(allocated)
    CUDA_MEMORY.labels("reserved").set(reserved)
    CUDA_MEMORY.labels("total").set(total)


def value(name: str, **labels: str) -> float:
    """The current value of one sample of REGISTRY; 0.0 when it does not exist."""
    sample = REGISTRY.get_sample_value(name, labels)
    return 0.0 if sample is None else sample
