"""The daemon's Worker with the GPU decode path (torchvision on CPU tensors), end to end
against real PostgreSQL and S3: frames cross the decode processes encoded, the batch is
decoded on the device, a frame it refuses gets its error row, and the job succeeds.
Runs in the GPU-path venv (.ci/run); skips where torchvision is absent."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import torch

from argus_embedder.pipeline import decoding, embedder, worker
from tests import support
from tests.conftest import S3Endpoint
from tests.unit.test_embedder import encode, textured

pytest.importorskip("torchvision", reason="the GPU decode path needs torchvision")


@pytest.mark.parametrize("processes", [0, 2])
def test_worker_decodes_on_the_device_and_isolates_a_refused_frame(
    conn: psycopg.Connection[Any], s3: S3Endpoint, tiny_siglip_dir: Path, processes: int
) -> None:
    model = embedder.load_embedder(str(tiny_siglip_dir), "cpu", batch_size=8, decode="cpu")
    model.recipe = dataclasses.replace(model.recipe, decode="gpu")
    model.decoder = decoding.GpuDecoder(model.recipe, torch.device("cpu"))
    model.preprocessing = model.recipe.id
    images = [encode(textured(640, 360, seed=seed), "JPEG", quality=90) for seed in range(10)]
    images[3] = images[3][: len(images[3]) // 2]  # truncated: refused, then fails on CPU too
    images[5] = encode(textured(320, 240, seed=50).convert("CMYK"), "JPEG")  # CPU path
    video = f"gpu-{processes}"
    uris = [s3.put(f"{video}/{index:03d}.jpg", data) for index, data in enumerate(images)]
    job_id = support.add_video(conn, video, uris)
    config = support.worker_settings(conn.info.dsn, s3.bucket, s3.url, model.model, batch_size=8)
    with worker.Worker(config, conn.info.dsn, model, decode_processes=processes) as loop:
        loop.run(burst=True)

    job = support.job(conn, job_id)
    assert job["status"] == "succeeded"
    assert (job["frames_total"], job["frames_done"], job["frames_failed"]) == (10, 10, 1)
    rows = {row["frame_index"]: row for row in support.embeddings(conn, video)}
    assert "truncated" in rows[3]["error"]
    reference = embedder.load_embedder(str(tiny_siglip_dir), "cpu", decode="cpu")
    good = [index for index in range(10) if index != 3]
    expected = reference.embed([reference.prepare(images[index]) for index in good])
    vectors = np.stack([rows[index]["embedding"].to_numpy() for index in good])
    assert ((vectors * expected).sum(axis=1) >= 0.999).all()
    assert {rows[index]["preprocessing"] for index in good} == {model.recipe.id}
    assert model.recipe.id.endswith("gpudecode-v1")
