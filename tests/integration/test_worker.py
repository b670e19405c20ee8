"""The worker end to end against real PostgreSQL and a real S3 endpoint (tiny model)."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

from argus_embedder import settings
from argus_embedder.pipeline import embedder, worker
from tests import support
from tests.conftest import S3Endpoint, textured_jpeg


@pytest.fixture(scope="session")
def tiny_embedder(tiny_siglip_dir: Path) -> embedder.Embedder:
    return embedder.load_embedder(str(tiny_siglip_dir), "cpu", batch_size=8)


def make_settings(database_url: str, s3: S3Endpoint, model: str, **extra: Any) -> settings.Settings:
    return support.worker_settings(database_url, s3.bucket, s3.url, model, batch_size=8, **extra)


def run_burst(
    database_url: str, s3: S3Endpoint, model: embedder.Embedder, **extra: Any
) -> worker.Worker:
    config = make_settings(database_url, s3, model.model, **extra)
    with worker.Worker(config, database_url, model) as loop:
        loop.run(burst=True)
    return loop


def reference_vectors(model_dir: Path, images: list[bytes]) -> np.ndarray:
    """What a direct Hugging Face forward pass gives for the same images."""
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    pil = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    with torch.inference_mode():
        inputs = processor(images=pil, return_tensors="pt")
        output = model.get_image_features(pixel_values=inputs["pixel_values"])
        features = getattr(output, "pooler_output", output)
        features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.numpy()


def test_video_of_50_frames_matches_hf_with_bad_frames_as_error_rows(
    conn: psycopg.Connection[Any],
    s3: S3Endpoint,
    tiny_embedder: embedder.Embedder,
    tiny_siglip_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    images = [textured_jpeg(seed) for seed in range(50)]
    uris = [s3.put(f"v1/{i:04d}.jpg", data) for i, data in enumerate(images)]
    uris[7] = f"s3://{s3.bucket}/v1/missing.jpg"
    uris[23] = s3.put("v1/corrupt.jpg", images[23][: len(images[23]) // 3])
    job_id = support.add_video(conn, "v1", uris)
    assert job_id is not None

    caplog.set_level(logging.WARNING, logger="argus_embedder.pipeline.failed_frames")
    run_burst(conn.info.dsn, s3, tiny_embedder)

    job = support.job(conn, job_id)
    assert job["status"] == "succeeded"
    assert (job["frames_total"], job["frames_done"], job["frames_failed"]) == (50, 50, 2)
    rows = support.embeddings(conn, "v1")
    assert len(rows) == 50
    errors = {row["frame_index"]: row["error"] for row in rows if row["error"]}
    assert set(errors) == {7, 23}
    assert "missing.jpg" in errors[7]
    # Each failed frame logged once, with its id, video, model and reason (DESIGN §6).
    logged = [record.getMessage() for record in caplog.records]
    for row in rows:
        if row["error"]:
            said = f"frame {row['frame_id']} of video 'v1' (job {job_id}, model "
            assert [line for line in logged if line.startswith(said)] == [
                f"{said}{tiny_embedder.model}) failed: {row['error']}"
            ], logged
    good = [row for row in rows if row["embedding"] is not None]
    vectors = np.stack([row["embedding"].to_numpy() for row in good])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = reference_vectors(tiny_siglip_dir, [images[row["frame_index"]] for row in good])
    cosine = np.sum(vectors * expected, axis=1)
    assert cosine.min() >= 0.9999, cosine.min()
    assert all(row["preprocessing"] == tiny_embedder.preprocessing for row in good)


def test_resumed_job_does_not_redo_finished_frames(
    conn: psycopg.Connection[Any], s3: S3Endpoint, tiny_embedder: embedder.Embedder
) -> None:
    uris = [s3.put(f"v2/{i}.jpg", textured_jpeg(i)) for i in range(20)]
    job_id = support.add_video(conn, "v2", uris[:12])
    run_burst(conn.info.dsn, s3, tiny_embedder)
    first = {row["frame_id"]: row["created_at"] for row in support.embeddings(conn, "v2")}
    assert len(first) == 12
    # Later frames arrive and the frame stage enqueues again.
    second_job = support.add_video(conn, "v2", uris[12:], first_index=12)
    assert second_job is not None and second_job != job_id
    run_burst(conn.info.dsn, s3, tiny_embedder)
    rows = support.embeddings(conn, "v2")
    assert len(rows) == 20
    assert all(
        row["created_at"] == first[row["frame_id"]] for row in rows if row["frame_id"] in first
    )
    job = support.job(conn, second_job)
    assert (job["status"], job["frames_total"], job["frames_done"]) == ("succeeded", 20, 20)


def test_cancel_stops_a_running_job_at_its_next_batch(
    conn: psycopg.Connection[Any], s3: S3Endpoint, tiny_embedder: embedder.Embedder
) -> None:
    uris = [s3.put(f"v3/{i}.jpg", textured_jpeg(i)) for i in range(40)]
    job_id = support.add_video(conn, "v3", uris)
    assert job_id is not None

    class CancelAfterFirstBatch:
        """Wraps the embedder: cancels the job (as an operator would) during batch 2."""

        def __init__(self, inner: embedder.Embedder) -> None:
            self.inner = inner
            self.model, self.batch_size = inner.model, inner.batch_size
            self.dimension = inner.dimension
            self.preprocessing = inner.preprocessing
            self.calls = 0

        def prepare(self, data: bytes) -> Any:
            return self.inner.prepare(data)

        def embed(self, images: Any) -> Any:
            self.calls += 1
            if self.calls == 2:
                # The operator cancels once batch 1's progress is visible.
                deadline = time.monotonic() + 10
                while support.job(conn, job_id)["frames_done"] < 8:
                    assert time.monotonic() < deadline, "batch 1 never committed"
                    time.sleep(0.01)
                with psycopg.connect(conn.info.dsn, autocommit=True) as other:
                    other.execute(
                        "UPDATE argus.embedding_jobs SET status = 'cancelled' WHERE id = %s",
                        (job_id,),
                    )
            return self.inner.embed(images)

    wrapped = CancelAfterFirstBatch(tiny_embedder)
    config = make_settings(conn.info.dsn, s3, tiny_embedder.model)
    with worker.Worker(config, conn.info.dsn, wrapped) as loop:  # type: ignore[arg-type]
        loop.run(burst=True)
    job = support.job(conn, job_id)
    assert job["status"] == "cancelled"
    written = len(support.embeddings(conn, "v3"))
    assert written == 8  # batch 1 only: batch 2's write was fenced out
    assert wrapped.calls <= 3
    assert job["frames_done"] == 8


def test_shutdown_event_releases_the_job_without_burning_an_attempt(
    conn: psycopg.Connection[Any], s3: S3Endpoint, tiny_embedder: embedder.Embedder
) -> None:
    uris = [s3.put(f"v4/{i}.jpg", textured_jpeg(i)) for i in range(24)]
    job_id = support.add_video(conn, "v4", uris)
    assert job_id is not None
    stop = threading.Event()

    class StopDuringFirstBatch:
        def __init__(self, inner: embedder.Embedder) -> None:
            self.inner = inner
            self.model, self.batch_size = inner.model, inner.batch_size
            self.dimension = inner.dimension
            self.preprocessing = inner.preprocessing

        def prepare(self, data: bytes) -> Any:
            return self.inner.prepare(data)

        def embed(self, images: Any) -> Any:
            stop.set()  # SIGTERM arrives while batch 1 is on the model
            return self.inner.embed(images)

    config = make_settings(conn.info.dsn, s3, tiny_embedder.model)
    with worker.Worker(
        config,
        conn.info.dsn,
        StopDuringFirstBatch(tiny_embedder),
        shutdown=stop,  # type: ignore[arg-type]
    ) as loop:
        loop.run()
    job = support.job(conn, job_id)
    assert job["status"] == "queued"
    assert job["attempts"] == 0
    assert job["lease_token"] is None
    assert len(support.embeddings(conn, "v4")) == 8  # the batch in flight was finished
    assert job["frames_done"] == 8


def test_transient_s3_outage_retries_the_job_instead_of_failing_frames(
    conn: psycopg.Connection[Any], s3: S3Endpoint, tiny_embedder: embedder.Embedder
) -> None:
    uris = [s3.put(f"v5/{i}.jpg", textured_jpeg(i)) for i in range(4)]
    job_id = support.add_video(conn, "v5", uris)
    assert job_id is not None
    # An endpoint nobody listens on: connection refused is transient, never a frame error.
    run_burst(conn.info.dsn, s3, tiny_embedder, s3_endpoint_url="http://127.0.0.1:9")
    job = support.job(conn, job_id)
    assert job["status"] == "queued"
    assert job["attempts"] == 0  # an outage is not the job's fault: attempt given back
    assert "transient" in job["last_error"]
    assert support.embeddings(conn, "v5") == []


class _Wrapped:
    """An embedder wrapper for tests: same model, with a hook around embed()."""

    def __init__(self, inner: embedder.Embedder) -> None:
        self.inner = inner
        self.model, self.batch_size = inner.model, inner.batch_size
        self.dimension, self.preprocessing = inner.dimension, inner.preprocessing
        self.batches: list[int] = []
        self.poison: set[bytes] = set()

    def prepare(self, data: bytes) -> Any:
        return ("poison", data) if data in self.poison else self.inner.prepare(data)

    def embed(self, images: Any) -> Any:
        self.batches.append(len(images))
        if any(isinstance(image, tuple) for image in images):
            raise RuntimeError("the model crashed on this input")
        return self.inner.embed(images)


def test_small_jobs_share_batches(
    conn: psycopg.Connection[Any], s3: S3Endpoint, tiny_embedder: embedder.Embedder
) -> None:
    job_ids = []
    for video in range(6):
        uris = [s3.put(f"small{video}/{i}.jpg", textured_jpeg(video * 10 + i)) for i in range(3)]
        job_ids.append(support.add_video(conn, f"small-{video}", uris))
    wrapped = _Wrapped(tiny_embedder)
    config = make_settings(conn.info.dsn, s3, tiny_embedder.model)
    with worker.Worker(config, conn.info.dsn, wrapped) as loop:  # type: ignore[arg-type]
        loop.run(burst=True)
    assert sum(wrapped.batches) == 18
    assert len(wrapped.batches) <= 4  # not six one-job batches
    for job_id in job_ids:
        job = support.job(conn, job_id)  # type: ignore[arg-type]
        assert (job["status"], job["frames_total"], job["frames_done"]) == ("succeeded", 3, 3)


def test_a_model_crash_fails_only_the_poison_job(
    conn: psycopg.Connection[Any], s3: S3Endpoint, tiny_embedder: embedder.Embedder
) -> None:
    wrapped = _Wrapped(tiny_embedder)
    poison_bytes = textured_jpeg(999)
    wrapped.poison.add(poison_bytes)
    good = support.add_video(
        conn, "good", [s3.put(f"good/{i}.jpg", textured_jpeg(i)) for i in range(3)]
    )
    poison = support.add_video(conn, "bad", [s3.put("bad/0.jpg", poison_bytes)])
    also_good = support.add_video(
        conn, "good2", [s3.put(f"good2/{i}.jpg", textured_jpeg(50 + i)) for i in range(3)]
    )
    config = make_settings(conn.info.dsn, s3, tiny_embedder.model)
    with worker.Worker(config, conn.info.dsn, wrapped) as loop:  # type: ignore[arg-type]
        loop.run(burst=True)
    for job_id in (good, also_good):
        assert support.job(conn, job_id)["status"] == "succeeded"  # type: ignore[arg-type]
    bad = support.job(conn, poison)  # type: ignore[arg-type]
    assert bad["status"] == "queued" and bad["attempts"] == 1  # retried later, with backoff
    assert "the model crashed" in bad["last_error"]
    assert support.embeddings(conn, "bad") == []


def test_run_once_steps_exactly_one_batch(
    conn: psycopg.Connection[Any], s3: S3Endpoint, tiny_embedder: embedder.Embedder
) -> None:
    """STYLE habit 10: each run_once embeds one batch and starts its write; the next
    call lands that write; False only once nothing is left, everything settled."""
    uris = [s3.put(f"steps/{i}.jpg", textured_jpeg(300 + i)) for i in range(20)]
    job_id = support.add_video(conn, "steps", uris)
    wrapped = _Wrapped(tiny_embedder)
    config = make_settings(conn.info.dsn, s3, tiny_embedder.model)  # batch 8
    with worker.Worker(config, conn.info.dsn, wrapped) as loop:  # type: ignore[arg-type]
        assert loop.run_once()
        assert wrapped.batches == [8]
        assert loop.run_once()
        assert wrapped.batches == [8, 8]
        # The first write has landed; the second, started asynchronously, may have too.
        assert len(support.embeddings(conn, "steps")) in (8, 16)
        assert loop.run_once()
        assert wrapped.batches == [8, 8, 4]
        assert loop.run_once()  # no frame left: the last write settles the job
        assert wrapped.batches == [8, 8, 4]
        assert not loop.run_once()
    job = support.job(conn, job_id)  # type: ignore[arg-type]
    assert (job["status"], job["frames_done"]) == ("succeeded", 20)
    assert len(support.embeddings(conn, "steps")) == 20
