"""A checkpoint's image preprocessing, and the frames it prepares: no torch here.

Decoding runs in worker processes (`preparing`) that never import torch, so what crosses
the process boundary (a Recipe going in, PreparedImages coming back) lives in this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from argus_embedder.pipeline import images

Family = Literal["fixed", "naflex"]
RECIPE_VERSION = "v1"  # bump when prepare() changes pixels for the same recipe
_STANDARD_NORMALIZATION = (1 / 255, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedImage:
    """One decoded, resized frame: CPU-side uint8 arrays, picklable, ready to stack.

    Fixed family: `pixels` is (height, width, 3). NaFlex: `pixels` is (max_num_patches,
    patch_size * patch_size * 3) with `mask` and `spatial_shape` set.
    """

    pixels: npt.NDArray[np.uint8]
    mask: npt.NDArray[np.int32] | None = None
    spatial_shape: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedImage:
    """A JPEG left for the model's device to decode in its batch (ARGUS_DECODE=gpu):
    the bytes, checked as far as the header, and their EXIF orientation."""

    data: bytes
    orientation: int = 1


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The checkpoint's image preprocessing, read from its image processor config."""

    family: Family
    resample: int
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: tuple[int, int] = (0, 0)  # fixed family: (height, width)
    patch_size: int = 0  # NaFlex family
    max_num_patches: int = 0  # NaFlex family
    draft: bool = True  # JPEG decoding at the DCT floor (see images._draft)
    decode: Literal["cpu", "gpu"] = "cpu"  # gpu: prepare leaves JPEGs to pipeline.decoding

    @property
    def id(self) -> str:
        """Short, stable name of the recipe, stored per vector (e.g. siglip-fixed-224-...)."""
        resample = _RESAMPLE_NAMES.get(self.resample, f"resample{self.resample}")
        if self.family == "fixed":
            height, width = self.size
            shape = (
                f"siglip-fixed-{height}" if height == width else f"siglip-fixed-{height}x{width}"
            )
        else:
            shape = f"siglip2-naflex-p{self.patch_size}-n{self.max_num_patches}"
        parts = [shape, resample]
        if (self.rescale_factor, self.mean, self.std) != _STANDARD_NORMALIZATION:
            digest = hashlib.sha256(repr((self.rescale_factor, self.mean, self.std)).encode())
            parts.append(f"norm{digest.hexdigest()[:6]}")
        if self.decode == "gpu":
            parts.append("gpudecode")
        elif self.draft:
            parts.append("floor")
        parts.append(RECIPE_VERSION)
        return "-".join(parts)

    def prepare(self, data: bytes) -> PreparedImage | EncodedImage:
        """Decode and resize one encoded image; raises errors.FrameError for a bad image.

        With `decode="gpu"` a JPEG the GPU decoder takes comes back encoded, its header
        checked: the device decodes it with its batch (pipeline.decoding).
        """
        if self.decode == "gpu":
            orientation = images.gpu_decodable(data)
            if orientation is not None:
                return EncodedImage(data, orientation)
        return self.prepare_on_cpu(data)

    def prepare_on_cpu(self, data: bytes) -> PreparedImage:
        """Decode and resize on this CPU, whatever `decode` says."""
        if self.family == "fixed":
            pixels = images.prepare_fixed(data, self.size, self.resample, draft=self.draft)
            return PreparedImage(pixels=pixels)
        patches = images.prepare_naflex(
            data, self.patch_size, self.max_num_patches, self.resample, draft=self.draft
        )
        return PreparedImage(patches.pixels, patches.mask, patches.spatial_shape)

    def prepare_image(self, image: Any) -> PreparedImage:
        """Like `prepare` for an already decoded RGB PIL image (no draft decoding)."""
        if self.family == "fixed":
            return PreparedImage(images.preprocess_fixed(image, self.size, self.resample))
        patches = images.preprocess_naflex(
            image, self.patch_size, self.max_num_patches, self.resample
        )
        return PreparedImage(patches.pixels, patches.mask, patches.spatial_shape)
