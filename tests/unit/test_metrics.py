"""The metrics module: names, types, labels and exposition that dashboards and alerts rely on."""

from __future__ import annotations

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from argus_embedder import metrics
from argus_embedder.commands import serve_metrics
from argus_embedder.runtime import health

# (module attribute, exposed name, type, label names): the contract of DESIGN §6.
EXPECTED = [
    ("BUILD_INFO", "argus_embedder_build_info", Gauge, ("version", "model", "device")),
    ("READY", "argus_embedder_ready", Gauge, ()),
    ("JOBS_CLAIMED", "argus_embedder_jobs_claimed_total", Counter, ()),
    ("JOBS_COMPLETED", "argus_embedder_jobs_completed_total", Counter, ("outcome",)),
    ("FRAMES_PROCESSED", "argus_embedder_frames_processed_total", Counter, ("outcome",)),
    ("JOB_QUEUE_WAIT", "argus_embedder_job_queue_wait_seconds", Histogram, ()),
    ("JOB_DURATION", "argus_embedder_job_duration_seconds", Histogram, ()),
    ("STAGE_DURATION", "argus_embedder_stage_duration_seconds", Histogram, ("stage",)),
    ("BATCH_SIZE", "argus_embedder_batch_size", Histogram, ()),
    ("LAST_SUCCESS", "argus_embedder_last_success_timestamp_seconds", Gauge, ()),
    ("LOOP_HEARTBEAT", "argus_embedder_loop_heartbeat_timestamp_seconds", Gauge, ()),
    ("MODEL_LOAD", "argus_embedder_model_load_seconds", Gauge, ()),
    ("CUDA_MEMORY", "argus_embedder_cuda_memory_bytes", Gauge, ("kind",)),
    ("CUDA_OOM", "argus_embedder_cuda_oom_total", Counter, ()),
    ("QUEUE_JOBS", "argus_embedder_queue_jobs", Gauge, ("state",)),
    ("QUEUE_OLDEST_AGE", "argus_embedder_queue_oldest_queued_age_seconds", Gauge, ()),
    ("QUEUE_FRAMES_WAITING", "argus_embedder_queue_frames_waiting", Gauge, ()),
    ("RECONCILER_MISSING", "argus_embedder_reconciler_missing_frames", Gauge, ()),
    ("RECONCILER_ENQUEUED", "argus_embedder_reconciler_jobs_enqueued_total", Counter, ()),
    ("DB_ERRORS", "argus_embedder_db_errors_total", Counter, ()),
    ("S3_RETRIES", "argus_embedder_s3_retries_total", Counter, ()),
]

# Labels whose values grow without bound or may carry secrets.
FORBIDDEN_LABELS = {"job_id", "video_id", "frame_id", "worker_id", "uri", "url", "path", "error"}


def _families() -> dict[str, object]:
    return {family.name: family for family in metrics.REGISTRY.collect()}


@pytest.mark.parametrize(("attribute", "name", "kind", "labels"), EXPECTED)
def test_each_metric_is_declared_with_its_name_type_and_labels(
    attribute: str, name: str, kind: type, labels: tuple[str, ...]
) -> None:
    metric = getattr(metrics, attribute)
    assert isinstance(metric, kind)
    assert metric._labelnames == labels  # type: ignore[attr-defined]
    type_lines = [
        line for line in health.render_metrics().decode().splitlines() if line.startswith("# TYPE ")
    ]
    # prometheus-client writes counters' TYPE with or without _total, by version.
    assert any(line.split()[2] in (name, name.removesuffix("_total")) for line in type_lines)


def test_every_series_is_prefixed_and_labels_are_bounded() -> None:
    ours = [name for name in _families() if name.startswith("argus_embedder_")]
    assert len(ours) == len(EXPECTED)
    for family in metrics.REGISTRY.collect():
        if not family.name.startswith("argus_embedder_"):
            assert family.name.startswith(("process_", "python_")), family.name
            continue
        for sample in family.samples:
            assert not FORBIDDEN_LABELS & set(sample.labels), sample


def test_the_daemon_declares_none_of_serves_series() -> None:
    """serve counts its requests on its own registry (DESIGN §6); the daemon's /metrics
    showing them at 0 would only mislead a dashboard."""
    serves = {family.name for family in serve_metrics.REGISTRY.collect()}
    shared = {name for name in serves if not name.startswith("argus_embedder_")}
    shared.add("argus_embedder_build_info")  # each process says what it runs
    assert not (serves - shared) & set(_families())


def test_label_values_exist_at_zero_from_the_start() -> None:
    """rate() and the alerts need a 0 series before the first event, not a missing one."""
    exposed = health.render_metrics().decode()
    for outcome in metrics.JOB_OUTCOMES:
        assert f'argus_embedder_jobs_completed_total{{outcome="{outcome}"}}' in exposed
    for outcome in metrics.FRAME_OUTCOMES:
        assert f'argus_embedder_frames_processed_total{{outcome="{outcome}"}}' in exposed
    for stage in metrics.STAGES:
        assert f'argus_embedder_stage_duration_seconds_count{{stage="{stage}"}}' in exposed
    for state in metrics.QUEUE_STATES:
        assert f'argus_embedder_queue_jobs{{state="{state}"}}' in exposed
    for kind in metrics.CUDA_MEMORY_KINDS:
        assert f'argus_embedder_cuda_memory_bytes{{kind="{kind}"}}' in exposed
    assert "_created" not in exposed


def test_fixed_label_sets_match_the_design() -> None:
    assert set(metrics.JOB_OUTCOMES) == {
        "succeeded", "failed", "cancelled", "released", "lease_lost", "retried",
    }  # fmt: skip
    assert set(metrics.FRAME_OUTCOMES) == {"embedded", "failed"}
    assert set(metrics.STAGES) == {"download", "decode", "infer", "write"}
    assert set(metrics.QUEUE_STATES) == {"queued", "running", "succeeded", "failed", "cancelled"}


def test_buckets_cover_cpu_and_gpu_batches() -> None:
    stage = metrics.STAGE_BUCKETS
    assert stage[0] <= 0.001 and stage[-1] >= 60
    assert list(stage) == sorted(stage)
    assert tuple(float(2**power) for power in range(11)) == metrics.BATCH_BUCKETS


def test_stage_histogram_counts_an_observation_in_the_right_bucket() -> None:
    before = metrics.value("argus_embedder_stage_duration_seconds_bucket", stage="infer", le="0.05")
    count = metrics.value("argus_embedder_stage_duration_seconds_count", stage="infer")
    metrics.STAGE_DURATION.labels(stage="infer").observe(0.03)
    bucket = metrics.value("argus_embedder_stage_duration_seconds_bucket", stage="infer", le="0.05")
    assert bucket == before + 1
    assert metrics.value("argus_embedder_stage_duration_seconds_count", stage="infer") == count + 1


def test_build_info_keeps_one_series() -> None:
    metrics.set_build_info("1.0", "google/siglip2-base-patch16-224", "cuda:0")
    metrics.set_build_info("1.0", "google/siglip2-base-patch16-224", "cpu (fallback: no CUDA)")
    exposed = health.render_metrics().decode()
    lines = [line for line in exposed.splitlines() if line.startswith("argus_embedder_build_info{")]
    assert len(lines) == 1
    assert 'device="cpu (fallback: no CUDA)"' in lines[0]
    assert lines[0].endswith(" 1.0")


def test_queue_stats_fill_every_state_and_reject_unknown_ones() -> None:
    metrics.set_queue_stats({"queued": 7, "running": 2}, oldest_queued_age=42.5, frames_waiting=900)
    assert metrics.value("argus_embedder_queue_jobs", state="queued") == 7
    assert metrics.value("argus_embedder_queue_jobs", state="running") == 2
    assert metrics.value("argus_embedder_queue_jobs", state="failed") == 0
    assert metrics.value("argus_embedder_queue_oldest_queued_age_seconds") == 42.5
    assert metrics.value("argus_embedder_queue_frames_waiting") == 900

    metrics.set_queue_stats({}, oldest_queued_age=None, frames_waiting=0)
    assert metrics.value("argus_embedder_queue_jobs", state="queued") == 0
    assert metrics.value("argus_embedder_queue_oldest_queued_age_seconds") == 0

    with pytest.raises(ValueError, match="paused"):
        metrics.set_queue_stats({"paused": 1}, oldest_queued_age=None, frames_waiting=0)


def test_cuda_memory() -> None:
    metrics.set_cuda_memory(allocated=1 << 30, reserved=2 << 30, total=80 << 30)
    assert metrics.value("argus_embedder_cuda_memory_bytes", kind="reserved") == 2 << 30
    assert metrics.value("argus_embedder_cuda_memory_bytes", kind="total") == 80 << 30


def test_value_of_a_missing_sample_is_zero() -> None:
    assert metrics.value("argus_embedder_no_such_metric") == 0.0


def test_render_is_valid_exposition() -> None:
    counter_before = metrics.value("argus_embedder_jobs_claimed_total")
    metrics.JOBS_CLAIMED.inc()
    parsed = {
        family.name: family
        for family in text_string_to_metric_families(health.render_metrics().decode())
    }
    claimed = parsed["argus_embedder_jobs_claimed"]
    assert claimed.type == "counter"
    assert claimed.samples[0].value == counter_before + 1
    assert "process_resident_memory_bytes" in parsed
    assert health.METRICS_CONTENT_TYPE.startswith("text/plain; version=")
