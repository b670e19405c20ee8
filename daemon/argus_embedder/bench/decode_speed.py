"""decode_speedup_over_stock: the daemon's decode + resize vs the stock path, on one core.

Both sides turn the same noisy 720p q90 4:2:0 JPEGs (~400 KB, as real footage encodes)
into the model's input in this thread, one frame after another: the stock path decodes
in full with Pillow and runs the checkpoint's own image processor (`AutoImageProcessor`,
resize, /255, mean/std), the daemon's runs its recipe's `prepare` (decode at the DCT
floor, resize; /255 and mean/std happen on the model's device). Each side is timed by
this thread's CPU time, so another process on the core does not count, in A B B A order
and counted by its best run.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import transformers
from PIL import Image, ImageOps

from argus_embedder.bench import dataset
from argus_embedder.pipeline import embedder

NOISE_SIGMA = 14.0  # sensor-like noise on top of the bench's frames: ~400 KB at q90


@dataclasses.dataclass(frozen=True)
class Result:
    """Frames per CPU-second of one core, each side's best run, and their ratio."""

    daemon_frames_per_second: float
    stock_frames_per_second: float
    speedup: float
    frames: int
    mean_bytes: int
    runs_frames_per_second: dict[str, list[float]]


def noisy_frames(count: int, *, seed: int = 2028) -> list[bytes]:
    """`count` 1280x720 JPEGs, quality 90, 4:2:0, with the grain of real footage."""
    rng = np.random.default_rng(seed)
    frames = []
    for data in dataset.textured_frames(count, seed=seed):
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
        pixels += rng.normal(0.0, NOISE_SIGMA, pixels.shape).astype(np.float32)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=dataset.JPEG_QUALITY, subsampling="4:2:0")
        frames.append(buffer.getvalue())
    return frames


def stock(checkpoint: Path) -> Callable[[bytes], Any]:
    """The stock path: Pillow decodes in full, the checkpoint's processor does the rest."""
    with embedder.quiet_transformers():
        auto: Any = transformers.AutoImageProcessor  # untyped upstream
        processor = auto.from_pretrained(checkpoint)

    def run(data: bytes) -> Any:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        return processor(images=image, return_tensors="np")["pixel_values"]

    return run


def run(checkpoint: Path, frames: Sequence[bytes], *, rounds: int = 2) -> Result:
    """Time both paths over `frames` (`rounds` runs each, A B B A)."""
    recipe = embedder.load_recipe(str(checkpoint))
    sides: dict[str, Callable[[bytes], Any]] = {
        "daemon": recipe.prepare,
        "stock": stock(checkpoint),
    }
    for prepare in sides.values():  # first calls (imports, caches) outside the timing
        prepare(frames[0])
    order = [*sides] * rounds
    order = order[: len(order) // 2] + order[: len(order) // 2][::-1]
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for name in order:
        prepare = sides[name]
        started = time.thread_time()
        for data in frames:
            prepare(data)
        rates[name].append(len(frames) / max(time.thread_time() - started, 1e-9))
    daemon, reference = max(rates["daemon"]), max(rates["stock"])
    return Result(
        daemon_frames_per_second=daemon,
        stock_frames_per_second=reference,
        speedup=daemon / reference,
        frames=len(frames),
        mean_bytes=round(sum(map(len, frames)) / len(frames)),
        runs_frames_per_second=rates,
    )
