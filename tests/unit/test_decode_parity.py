"""Decoding at the floor keeps DESIGN §5's parity: cosine >= 0.999 per frame vs the stock path.

The stock path is what a user of the checkpoint would write: Pillow decodes the whole
JPEG (EXIF orientation applied, as `transformers.image_utils.load_image` does), the
checkpoint's own `AutoImageProcessor` resizes and normalizes, the vision tower embeds.
The daemon's path is its embedder's `prepare` (decode at the DCT floor) and `embed`.
Both towers run in float32 on CPU, so only preprocessing differs. Run with `-s` to see
the worst cosine per model (it is also recorded as the test's `worst_cosine` property).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from PIL import Image, ImageDraw, ImageOps

from argus_embedder.pipeline import embedder
from argus_embedder.testing import tinymodel
from tests.unit.test_embedder import encode

MIN_COSINE = 0.999  # DESIGN §5, per frame
SIZES = {"1080p": (1920, 1080), "720p": (1280, 720), "480p": (640, 480)}


def footage(width: int, height: int, seed: int) -> Image.Image:
    """Content like a video frame's (as the bench draws them): smooth colour fields at
    three scales, hard-edged shapes and sensor-like noise."""
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(60.0, 190.0, 3) + rng.normal(0.0, 5.0, (height, width, 3))
    for grid, amplitude in (((6, 10), 70.0), ((45, 80), 25.0), ((180, 320), 12.0)):
        cells = rng.uniform(0.0, 255.0, (*grid, 3)).astype(np.uint8)
        field = Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)
        pixels += (np.asarray(field, dtype=np.float64) - 127.5) * (amplitude / 127.5)
    image = Image.fromarray(np.clip(pixels, 0.0, 255.0).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        left, top = int(rng.integers(0, width)), int(rng.integers(0, height))
        side = int(rng.integers(width // 60, width // 5))
        colour = tuple(int(value) for value in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((left, top, left + side, top + int(side * 0.6)), fill=colour)
    return image


def _rotated(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display: the reduced box must turn too
    return encode(image, "JPEG", quality=90, exif=exif.tobytes())


KINDS: dict[str, Callable[[Image.Image], bytes]] = {
    "4:2:0": lambda image: encode(image, "JPEG", quality=90, subsampling="4:2:0"),
    "4:4:4": lambda image: encode(image, "JPEG", quality=90, subsampling="4:4:4"),
    "progressive": lambda image: encode(image, "JPEG", quality=85, progressive=True),
    "exif-rotated": _rotated,
    "cmyk": lambda image: encode(image.convert("CMYK"), "JPEG", quality=90),
    "grayscale": lambda image: encode(image.convert("L"), "JPEG", quality=90),
}


def jpegs() -> dict[str, bytes]:
    """Every size x kind, each from its own picture."""
    frames = {}
    for seed, (size_name, size) in enumerate(SIZES.items()):
        for offset, (kind, make) in enumerate(KINDS.items()):
            frames[f"{size_name}-{kind}"] = make(footage(*size, seed=10 * seed + offset))
    return frames


@pytest.fixture(scope="module")
def frames() -> dict[str, bytes]:
    return jpegs()


@pytest.fixture(scope="module")
def base_b16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SigLIP 2 B/16's vision tower at 224 px with random weights (no download)."""
    with embedder.quiet_transformers():
        return tinymodel.build_base_b16(tmp_path_factory.mktemp("base-b16"))


@pytest.fixture(scope="module", params=["tiny-siglip", "tiny-naflex", "b16-224"])
def checkpoint(request: pytest.FixtureRequest) -> Path:
    name = {
        "tiny-siglip": "tiny_siglip_dir",
        "tiny-naflex": "tiny_naflex_dir",
        "b16-224": "base_b16_dir",
    }[request.param]
    path = request.getfixturevalue(name)
    assert isinstance(path, Path)
    return path


def stock_vectors(checkpoint: Path, data: list[bytes]) -> np.ndarray:
    """Pillow full decode + the checkpoint's AutoImageProcessor + its vision tower."""
    with embedder.quiet_transformers():
        auto: Any = transformers.AutoImageProcessor
        processor = auto.from_pretrained(checkpoint)
        config = transformers.AutoConfig.from_pretrained(checkpoint)
        naflex = config.model_type.startswith("siglip2")
        tower_class: Any = (
            transformers.Siglip2VisionModel if naflex else transformers.SiglipVisionModel
        )
        tower = tower_class.from_pretrained(checkpoint).eval()
    decoded = [
        ImageOps.exif_transpose(Image.open(io.BytesIO(item))).convert("RGB") for item in data
    ]
    vectors = []
    with torch.inference_mode():
        for image in decoded:  # one at a time: NaFlex grids differ per aspect ratio
            inputs = processor(images=[image], return_tensors="pt")
            vectors.append(embedder.pooled(tower(**inputs)))
    return torch.nn.functional.normalize(torch.cat(vectors), dim=-1).numpy()


def test_floor_decoding_keeps_parity_with_the_stock_path(
    checkpoint: Path,
    frames: dict[str, bytes],
    record_property: Callable[[str, object], None],
) -> None:
    loaded = embedder.load_embedder(str(checkpoint), device="cpu", batch_size=6)
    names = list(frames)
    ours = loaded.embed([loaded.prepare(frames[name]) for name in names])
    expected = stock_vectors(checkpoint, [frames[name] for name in names])
    cosines = dict(zip(names, (ours * expected).sum(axis=1).tolist(), strict=True))
    worst = min(cosines, key=cosines.__getitem__)
    record_property("worst_cosine", cosines[worst])
    print(f"\n{checkpoint.name}: worst cosine {cosines[worst]:.6f} ({worst})")
    assert cosines[worst] >= MIN_COSINE, cosines
