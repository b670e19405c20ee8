"""Scenario 3: S3 faults through a fault-injecting proxy in front of the real endpoint.

Transient faults (5xx bursts, responses slower than the read timeout, connection resets,
truncated bodies, request-level 4xx such as clock skew) are retried and absorbed, never
recorded as a frame's error; a permanently missing object becomes an error row.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from argus_embedder import errors, metrics, settings
from argus_embedder.pipeline import embedder, preparing, storage
from tests import support
from tests.conftest import S3Endpoint
from tests.faults import harness, invariants
from tests.faults.conftest import add_videos, all_final, job_counts, run_worker, small_jpeg
from tests.faults.proxy import Fault, FaultProxy

READ_TIMEOUT = 1.0
# Where a test counts retries exactly and injects no slowness, a timeout a loaded CI
# machine never reaches: a 0.5 s one once cut a plain GET there and counted a third retry.
UNHURRIED_TIMEOUT = 10.0


def fast_storage(
    proxy: FaultProxy, bucket: str, attempts: int = 5, timeout: float = READ_TIMEOUT
) -> storage.Storage:
    """The daemon's Storage pointed at the proxy, with short timeouts to keep tests fast."""
    config = settings.load(env={}, s3_bucket=bucket, s3_endpoint_url=proxy.url)
    return storage.Storage(
        config,
        attempts=attempts,
        max_wait=0.2,
        connect_timeout=timeout,
        read_timeout=timeout,
    )


TRANSIENT_FAULTS = {
    "503 SlowDown": Fault("error", 2),
    "500 InternalError": Fault("error", 2, status=500, code="InternalError"),
    "502 from a load balancer": Fault("error", 2, status=502, code="BadGateway"),
    "slow past the read timeout": Fault("slow", 2, delay=READ_TIMEOUT * 2.5),
    "body stalls past the read timeout": Fault("stall", 2, delay=READ_TIMEOUT * 2.5),
    "connection reset": Fault("reset", 2),
    "truncated body": Fault("truncate", 2),
    "400 RequestTimeout": Fault("error", 2, status=400, code="RequestTimeout"),
    "403 RequestTimeTooSkewed": Fault("error", 2, status=403, code="RequestTimeTooSkewed"),
    "403 SignatureDoesNotMatch": Fault("error", 2, status=403, code="SignatureDoesNotMatch"),
    "400 ExpiredToken": Fault("error", 2, status=400, code="ExpiredToken"),
}


@pytest.mark.parametrize("name", list(TRANSIENT_FAULTS))
def test_each_transient_fault_is_retried_and_absorbed(
    name: str, proxy: FaultProxy, s3: S3Endpoint
) -> None:
    data = small_jpeg(1) * 20  # a few tens of kB, so a truncated body is really cut
    uri = s3.put("obj.jpg", data)
    fault = TRANSIENT_FAULTS[name]
    proxy.inject(Fault(**{**fault.__dict__, "match": "obj.jpg"}))
    retries = metrics.value("argus_embedder_s3_retries_total")
    timeout = READ_TIMEOUT if fault.mode in ("slow", "stall") else UNHURRIED_TIMEOUT
    started = time.monotonic()
    assert fast_storage(proxy, s3.bucket, timeout=timeout).fetch(uri) == data
    assert proxy.pending() == 0 and proxy.applied[fault.mode] == 2
    assert metrics.value("argus_embedder_s3_retries_total") - retries == 2
    assert time.monotonic() - started < 10


def test_retries_in_decode_processes_count_in_the_daemons_metrics(
    proxy: FaultProxy, s3: S3Endpoint
) -> None:
    """The daemon fetches in decode processes, whose own counters nobody scrapes: each
    frame brings its retries back, and the daemon's counter takes them."""
    uris = [s3.put(f"obj{i}.jpg", small_jpeg(i)) for i in range(3)]
    proxy.inject(Fault("error", 2, match="obj1.jpg"))
    proxy.inject(Fault("reset", 1, match="obj2.jpg"))
    retries = metrics.value("argus_embedder_s3_retries_total")
    unhurried = fast_storage(proxy, s3.bucket, timeout=UNHURRIED_TIMEOUT)
    preparer = preparing.ProcessPreparer(unhurried, len, 1)
    try:
        outputs = [future.result(timeout=60) for future in preparer.submit(uris)]
    finally:
        preparer.close()
    assert [result.output for result in outputs] == [len(small_jpeg(i)) for i in range(3)]
    assert [result.s3_retries for result in outputs] == [0, 2, 1]
    assert metrics.value("argus_embedder_s3_retries_total") - retries == 3


def test_a_fault_that_outlasts_the_retries_is_transient_not_a_frame_error(
    proxy: FaultProxy, s3: S3Endpoint
) -> None:
    uri = s3.put("obj.jpg", small_jpeg(2))
    proxy.inject(Fault("error", 100))
    with pytest.raises(errors.TransientError, match="SlowDown"):
        fast_storage(proxy, s3.bucket, attempts=4).fetch(uri)
    assert proxy.applied["error"] == 4


@pytest.mark.parametrize("mode", ["truncate", "stall", "reset"])
def test_a_fault_on_an_error_response_is_still_transient(
    mode: str, proxy: FaultProxy, s3: S3Endpoint
) -> None:
    """botocore reads an error response's body outside its own exception wrappers; a
    reset or stall there must not escape as an unknown error (found by this suite)."""
    proxy.inject(Fault(mode, 2, delay=READ_TIMEOUT * 2.5))  # type: ignore[arg-type]
    with pytest.raises(errors.FrameError, match="NoSuchKey"):
        fast_storage(proxy, s3.bucket).fetch(f"s3://{s3.bucket}/missing.jpg")
    assert proxy.applied[mode] == 2 and proxy.applied["forwarded"] == 1


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://{bucket}/no/such/key.jpg", "NoSuchKey"),
        ("s3://no-such-bucket-anywhere/frame.jpg", "NoSuchBucket"),
        ("s3://{bucket}/a/../obj.jpg", "NoSuchKey"),  # the key is literal, never normalised
    ],
)
def test_permanent_faults_are_frame_errors_without_retries(
    uri: str, message: str, proxy: FaultProxy, s3: S3Endpoint
) -> None:
    s3.put("obj.jpg", small_jpeg(3))
    with pytest.raises(errors.FrameError, match=message):
        fast_storage(proxy, s3.bucket).fetch(uri.format(bucket=s3.bucket))
    assert proxy.requests == 1


def test_worker_absorbs_random_s3_faults_and_records_only_the_missing_object(
    audited: psycopg.Connection[Any],
    s3: S3Endpoint,
    proxy: FaultProxy,
    tiny_embedder: embedder.Embedder,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real worker loop (in this process, so its Storage can use short timeouts):
    a fifth of all GETs fail in one of five ways; only the missing object is an error."""
    videos = add_videos(audited, s3, 8, 12, distinct_objects=12)
    support.add_video(audited, "with-missing", [s3.put("m/0.jpg", small_jpeg(0)), "m/absent.jpg"])
    for mode, extra in (
        ("error", {}),
        ("reset", {}),
        ("truncate", {}),
        ("slow", {"delay": READ_TIMEOUT * 2.5}),
        ("error", {"status": 500, "code": "InternalError"}),
    ):
        proxy.inject(Fault(mode, times=1000, probability=0.05, **extra))  # type: ignore[arg-type]
    monkeypatch.setenv("PGAPPNAME", "in-process-worker")
    run_worker(
        database_url,
        tiny_embedder,
        bucket=s3.bucket,
        endpoint=proxy.url,
        worker_id="in-process-worker",
        storage=fast_storage(proxy, s3.bucket),
    )
    faults = sum(count for mode, count in proxy.applied.items() if mode != "forwarded")
    figures = invariants.check_invariants(audited)
    assert figures.statuses == {"succeeded": len(videos) + 1}
    assert figures.errors == 1
    error = audited.execute("SELECT error FROM argus.frame_embeddings WHERE error IS NOT NULL")
    row = error.fetchone()
    assert row is not None and "absent.jpg" in row["error"] and "NoSuchKey" in row["error"]
    assert faults >= 10, proxy.applied
    invariants.report(
        figures,
        "s3-faults-worker",
        requests=proxy.requests,
        faults_injected=faults,
        by_mode=dict(proxy.applied),
    )


@pytest.mark.slow
def test_daemon_rides_out_an_s3_outage_without_frame_errors(
    audited: psycopg.Connection[Any],
    s3: S3Endpoint,
    proxy: FaultProxy,
    fleet: harness.Fleet,
) -> None:
    """A real daemon behind the proxy: every request fails for several seconds mid-run,
    then S3 comes back. Jobs are retried with backoff; no frame gets an error row."""
    add_videos(audited, s3, 6, 30)
    daemon = fleet.start(ARGUS_S3_ENDPOINT_URL=proxy.url).wait_ready()
    harness.wait_for(
        lambda: invariants.count(audited, "SELECT count(*) FROM argus.frame_embeddings") >= 8,
        60,
        "some progress",
    )
    outage = Fault("error", times=10**6, status=503, code="ServiceUnavailable")
    proxy.inject(outage)
    time.sleep(6)
    proxy.clear()
    outage_faults = proxy.applied["error"]
    harness.wait_for(lambda: all_final(audited), 120, "every job to finish", step=0.2)
    figures = invariants.check_invariants(audited, daemons=[daemon])
    assert figures.statuses == {"succeeded": 6}, daemon.log()[-3000:]
    assert figures.errors == 0
    retried = invariants.count(
        audited, "SELECT count(*) FROM argus.embedding_jobs WHERE errors::text LIKE '%transient%'"
    )
    assert outage_faults > 0 and daemon.metric("argus_embedder_s3_retries_total") > 0
    fleet.drain()
    invariants.report(
        figures,
        "s3-outage-daemon",
        outage_seconds=6,
        failed_requests=outage_faults,
        jobs_retried_after_outage=retried,
    )


def test_an_outage_longer_than_the_backoffs_does_not_fail_jobs(
    audited: psycopg.Connection[Any],
    s3: S3Endpoint,
    proxy: FaultProxy,
    tiny_embedder: embedder.Embedder,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_videos(audited, s3, 2, 4, max_attempts=3)  # backoffs 1-2 s, then 2-4 s: ~5 s
    proxy.inject(Fault("error", times=10**6, status=503, code="ServiceUnavailable"))
    recovery = threading.Timer(10, proxy.clear)  # S3 is back after 10 s
    recovery.start()
    monkeypatch.setenv("PGAPPNAME", "outage-worker")
    try:
        run_worker(
            database_url,
            tiny_embedder,
            bucket=s3.bucket,
            endpoint=proxy.url,
            worker_id="outage-worker",
            storage=fast_storage(proxy, s3.bucket, attempts=2),
            timeout=90,
        )
    finally:
        recovery.cancel()
    assert job_counts(audited) == {"succeeded": 2}
