"""The loop argus-embedder replaces, written the way its first draft was (issue #59).

    for batch in batched(frames, 8):
        images = [download_and_open_image(f.s3_key) for f in batch]
        embeddings = extract_image_embeddings(images)
        for frame, embedding in zip(batch, embeddings):
            update_frame_embedding(client, frame.id, embedding)

One download at a time with boto3, the stock Hugging Face processor and model, batch 8, one
INSERT per frame in autocommit. `bench` measures the daemon against it on the same frames,
so this file stays deliberately naive: do not optimise it.
"""

from __future__ import annotations

import io
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3
import torch
import transformers
from PIL import Image

from argus_embedder import db
from argus_embedder.pipeline import embedder

BATCH_SIZE = 8


class NaiveLoop:
    """The first draft's model and clients, loaded once (as its Celery worker did).

    A context manager: it holds its database connection.
    """

    def __init__(self, model_dir: Path, *, model: str, url: str, s3_endpoint: str) -> None:
        self.model = model
        self._connection = db.connect(url, autocommit=True)
        auto: Any = transformers  # untyped upstream
        self._processor: Any = auto.AutoProcessor.from_pretrained(model_dir)
        self._model: Any = auto.AutoModel.from_pretrained(model_dir).eval()
        self._s3: Any = boto3.session.Session().client(
            "s3", endpoint_url=s3_endpoint, region_name="us-east-1"
        )

    def __enter__(self) -> NaiveLoop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._connection.close()

    def warm_up(self) -> None:
        """One forward pass, so the measured loop starts as warm as the daemon's."""
        self._embed([Image.new("RGB", (64, 64), (128, 128, 128))])

    def run(self, video_ids: Sequence[str]) -> None:
        """Embed every frame of `video_ids`."""
        connection = self._connection
        for video_id in video_ids:
            frames = connection.execute(
                db.queries()["bench_naive_frames"], {"video_id": video_id}
            ).fetchall()
            for start in range(0, len(frames), BATCH_SIZE):
                batch = frames[start : start + BATCH_SIZE]
                images = [self._download_and_open(frame["image_uri"]) for frame in batch]
                embeddings = self._embed(images)
                for frame, embedding in zip(batch, embeddings, strict=True):
                    connection.execute(
                        db.queries()["bench_naive_insert"],
                        {"frame_id": frame["id"], "model": self.model, "embedding": embedding},
                    )

    def _download_and_open(self, uri: str) -> Image.Image:
        parsed = urllib.parse.urlsplit(uri)
        response = self._s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        return Image.open(io.BytesIO(response["Body"].read())).convert("RGB")

    def _embed(self, images: list[Image.Image]) -> Any:
        with torch.no_grad():
            inputs = self._processor(images=images, return_tensors="pt")
            features = embedder.pooled(self._model.get_image_features(**inputs))
            return torch.nn.functional.normalize(features, dim=-1).numpy()
