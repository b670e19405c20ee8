"""Decode backends (ARGUS_DECODE): where JPEG bytes become the model's pixels, chosen once.

Both have one signature, `finish(outputs) -> outputs`, called on each batch's prepared
frames before the forward pass (pipeline.inference):

- `CpuDecoder`: the decode processes already decoded every frame at the DCT floor
  (images, recipe); nothing is left to do.
- `GpuDecoder`: the decode processes only fetched the JPEGs and checked their headers
  (`recipe.EncodedImage`); here the batch's bytes go through pinned host memory to
  `torchvision.io.decode_jpeg(list, device=...)` in one call, then EXIF orientation,
  an antialiased resize and rounding to uint8 run on the device. A frame the decoder
  refuses (a progressive or unusual JPEG some nvjpeg versions reject, corrupt bytes) is
  decoded alone on CPU instead; one that fails there too becomes its FrameError, so it
  gets its error row and the rest of the batch carries on.

torchvision is optional: it is imported only when a GPU decoder is chosen or asked for.
The same code runs with `device="cpu"` (torchvision decodes on CPU), which is how the
tests check the batching, fallback and parity on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from argus_embedder import errors
from argus_embedder.pipeline.recipe import EncodedImage, Recipe

log = logging.getLogger(__name__)

# Pillow resample codes the device can reproduce (torch's antialiased interpolate).
_MODES = {2: "bilinear", 3: "bicubic"}


@dataclasses.dataclass(frozen=True, eq=False)
class DevicePixels:
    """One frame decoded and resized on the model's device: (height, width, 3) uint8."""

    pixels: torch.Tensor


class Decoder(Protocol):
    name: str

    def finish(self, outputs: Sequence[Any]) -> list[Any]: ...


class CpuDecoder:
    """Frames arrive decoded (PreparedImage) or as their error: nothing left to do."""

    name = "cpu"

    def finish(self, outputs: Sequence[Any]) -> list[Any]:
        return list(outputs)


def torchvision_io() -> Any:
    """torchvision.io, or ConfigError saying why it cannot be imported."""
    try:
        return importlib.import_module("torchvision.io")
    except Exception as error:  # ImportError, or a torchvision built for another torch
        raise errors.ConfigError(
            f"torchvision is not importable ({errors.describe(error, 200)}); install it "
            "with pip install 'argus-embedder[gpu]' (a build matching torch "
            f"{torch.__version__})"
        ) from None


def choose(setting: str, device: torch.device, recipe: Recipe) -> str:
    """'gpu' or 'cpu' for ARGUS_DECODE=`setting`; ConfigError (exit 78) when `gpu` cannot run.

    `auto` decodes on the GPU only where it can (a CUDA device, torchvision importable, a
    fixed-resolution recipe with a bilinear or bicubic resize), else on CPU, silently.
    """
    if setting == "cpu":
        return "cpu"
    reason = _why_not_gpu(device, recipe)
    if reason is None:
        return "gpu"
    if setting == "gpu":
        raise errors.ConfigError(f"ARGUS_DECODE=gpu but {reason}; use ARGUS_DECODE=cpu or auto")
    return "cpu"


def _why_not_gpu(device: torch.device, recipe: Recipe) -> str | None:
    if device.type != "cuda":
        return f"the model runs on {device} (no CUDA device)"
    if recipe.family != "fixed":
        return "NaFlex checkpoints decode on CPU (their patch grids differ per frame)"
    if recipe.resample not in _MODES:
        return f"the checkpoint's resample filter {recipe.resample} has no GPU equivalent"
    try:
        torchvision_io()
    except errors.ConfigError as error:
        return str(error)
    return None


class GpuDecoder:
    """Batched JPEG decode + resize on `device` (CUDA in production, CPU in tests)."""

    name = "gpu"

    def __init__(self, recipe: Recipe, device: torch.device) -> None:
        self._recipe = recipe
        self._device = device
        self._io = torchvision_io()
        self._rgb = self._io.ImageReadMode.RGB
        self._pinned: torch.Tensor | None = None
        self.fallbacks = 0  # frames the device refused, decoded on CPU instead

    def finish(self, outputs: Sequence[Any]) -> list[Any]:
        results = list(outputs)
        encoded = [index for index, item in enumerate(results) if isinstance(item, EncodedImage)]
        if not encoded:
            return results
        items: list[EncodedImage] = [results[index] for index in encoded]
        decoded = self._decode(items)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, item, image in zip(encoded, items, decoded, strict=True):
            if image is None:
                results[index] = self._on_cpu(item)
            else:
                results[index] = _oriented(image, item.orientation)
                groups.setdefault(tuple(results[index].shape), []).append(index)
        for indices in groups.values():  # one resize per decoded size (a video's frames)
            batch = torch.stack([results[index] for index in indices])
            for index, pixels in zip(indices, self._resize(batch), strict=True):
                results[index] = DevicePixels(pixels)
        return results

    def _decode(self, items: list[EncodedImage]) -> list[torch.Tensor | None]:
        """Decode the batch in one call; if the decoder refuses it, frame by frame."""
        tensors = self._host_tensors(items)
        try:
            with _quiet_torchvision():
                return list(self._io.decode_jpeg(tensors, mode=self._rgb, device=self._device))
        except Exception as error:
            log.debug("batched JPEG decode refused (%s); decoding frame by frame", error)
        decoded: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                with _quiet_torchvision():
                    image = self._io.decode_jpeg(tensor, mode=self._rgb, device=self._device)
                decoded.append(image)
            except Exception:
                decoded.append(None)
        return decoded

    def _host_tensors(self, items: list[EncodedImage]) -> list[torch.Tensor]:
        """The compressed bytes as uint8 tensors; on CUDA, views of one pinned buffer.

        Reusing the buffer next batch is safe: that batch is decoded only after this one's
        vectors came back to the host, which waits for every copy queued before them.
        """
        if self._device.type != "cuda":
            return [torch.from_numpy(np.frombuffer(item.data, np.uint8).copy()) for item in items]
        total = sum(len(item.data) for item in items)
        if self._pinned is None or self._pinned.numel() < total:
            self._pinned = torch.empty(max(total, 1 << 20) * 2, dtype=torch.uint8).pin_memory()
        host = self._pinned.numpy()
        tensors, offset = [], 0
        for item in items:
            end = offset + len(item.data)
            host[offset:end] = np.frombuffer(item.data, np.uint8)
            tensors.append(self._pinned[offset:end])
            offset = end
        return tensors

    def _resize(self, batch: torch.Tensor) -> torch.Tensor:
        """(n, 3, h, w) uint8 -> (n, H, W, 3) uint8 at the recipe's size, as Pillow rounds."""
        height, width = self._recipe.size
        resized = torch.nn.functional.interpolate(
            batch.float(),
            size=(height, width),
            mode=_MODES[self._recipe.resample],
            align_corners=False,
            antialias=True,
        )
        return resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    def _on_cpu(self, item: EncodedImage) -> Any:
        """The CPU path for one frame the device refused: its pixels, or its error."""
        self.fallbacks += 1
        try:
            return self._recipe.prepare_on_cpu(item.data)
        except Exception as error:  # a FrameError becomes the frame's error row
            return error


@contextlib.contextmanager
def _quiet_torchvision() -> Iterator[None]:
    """torchvision 0.29 deprecates its image decoders (for TorchCodec) with a warning on
    every call; operators see our messages, not that one. Only the inference thread calls
    this, so the process-wide filter change cannot race another decode."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        yield


def _oriented(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to (3, h, w) pixels (PIL's transpose for each value)."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return image.rot90(-1, (-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return image.rot90(1, (-2, -1))
    return image


def start(setting: str, device: torch.device, recipe: Recipe) -> Decoder:
    """The decoder ARGUS_DECODE=`setting` picks for `device` (see `choose`)."""
    if choose(setting, device, recipe) == "gpu":
        return GpuDecoder(recipe, device)
    return CpuDecoder()
