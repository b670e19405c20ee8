"""Decode frame images and turn them into model-ready pixels (numpy + Pillow only, no torch).

The reference is the checkpoint's Hugging Face image processor fed the decoded image:
`convert_to_rgb` (transparency composited onto white), a Pillow resize with the checkpoint's
resample filter, /255, (x - mean) / std. The functions here reproduce that bit for bit up to
the resize and return uint8 pixels; the embedder does /255 and mean/std on the device, so
host memory and host-to-device copies carry a quarter of the bytes.

EXIF orientation is applied. The HF image processor itself never looks at EXIF (it receives
pixels), but every HF path that turns a file into pixels does: `transformers.image_utils.
load_image` calls `ImageOps.exif_transpose`, and the torchvision/torchcodec loaders apply the
orientation too. The upright image is also what a person searching for it has seen.

Everything here is thread-safe (no shared mutable state) and Pillow releases the GIL while it
decodes and resizes, so a thread pool scales across cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import threading
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, UnidentifiedImageError, _imaging

from argus_embedder import errors

DEFAULT_MAX_PIXELS = 50_000_000

# Decoding is where a hostile frame costs memory: a 190 kB PNG can declare 7000x7000 RGBA
# and needs ~0.9 GB while it is decoded, composited and converted (measured). Concurrent
# decodes share this budget (estimated bytes, see _decode_cost), so many threads still
# decode ordinary frames in parallel (a 4K RGB frame counts ~41 MB) while giant ones take
# turns instead of multiplying the peak by the thread count.
DECODE_BUDGET_BYTES = 1 << 30

# Pillow allocates pixels in blocks of up to 16 MB by default. glibc serves blocks under
# its dynamic mmap threshold (which climbs to 32 MB) from per-thread arenas and keeps them
# after free, so giant decodes taking turns on different threads still added up (peak
# +2.8 GB for four 49 MP RGBA frames, measured). Blocks above 32 MB are always mmapped
# and returned on free: the same four frames then peak at +0.94 GB and RSS falls back.
# Small images still get small blocks (a block is never bigger than the image needs).
PILLOW_BLOCK_BYTES = 64 << 20
_imaging.set_block_size(PILLOW_BLOCK_BYTES)  # what Image.core is; typed here

# Formats a frame can plausibly arrive in (multi-picture JPEGs open as JPEG and become MPO).
# Naming them keeps Pillow from trying its other plugins on untrusted bytes (EPS would start
# Ghostscript). Loading every plugin now, once, keeps that out of the worker threads and lets
# us drop what this Pillow build lacks (AVIF is optional).
Image.init()
FORMATS = tuple(
    name for name in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if name in Image.OPEN
)

# Decoding at the floor (DESIGN §5): libjpeg decodes in the DCT domain at 1/2, 1/4 or 1/8
# scale, and a JPEG is decoded at the largest of those whose image is still at least the
# resize target on both sides (720p -> 1/2 and 1080p -> 1/4 for 224 px), then resized with
# the checkpoint's filter over the box that covers exactly the original image. The pixels
# differ from a full decode by about a level RMS, the embeddings by far less than DESIGN
# §5's tolerance (cosine >= 0.999 per frame): tests/unit/test_decode_parity.py measures
# 1080p/720p/480p JPEGs of every common kind against the stock processor, for the tiny
# model and for B/16 at 224 px. A 720p frame for 224 px costs about half the CPU of a full
# decode (docs/performance.md).

# EXIF orientations 5-8 swap width and height.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})

UInt8Array = npt.NDArray[np.uint8]
Int32Array = npt.NDArray[np.int32]


@dataclasses.dataclass(frozen=True, eq=False)
class Patches:
    """A NaFlex image: uint8 patches padded to `max_num_patches`, a mask and the patch grid."""

    pixels: UInt8Array  # (max_num_patches, patch_size * patch_size * 3), rows (y, x, channel)
    mask: Int32Array  # (max_num_patches,), 1 for real patches, 0 for padding
    spatial_shape: tuple[int, int]  # (patch rows, patch columns)


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` into an upright RGB image; raise errors.FrameError for anything else.

    The size is checked from the header before any pixel is decoded, so a decompression bomb
    costs microseconds, not gigabytes.
    """
    image = _open(data, max_pixels)
    with _BUDGET.reserve(_decode_cost(image)):
        return _finish(image, data)


def prepare_fixed(
    data: bytes,
    size: tuple[int, int],
    resample: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
) -> UInt8Array:
    """Decode and resize for a fixed-resolution checkpoint; `size` is (height, width).

    Returns uint8 HWC pixels equal to `preprocess_fixed(decode(data), size, resample)`, up to
    the small differences JPEG draft decoding may bring when `draft` is true.
    """
    image = _open(data, max_pixels)
    box = _draft(image, (size[1], size[0])) if draft else None
    with _BUDGET.reserve(_decode_cost(image)):
        return _resize(_finish(image, data), size, resample, box)


def prepare_naflex(
    data: bytes,
    patch_size: int,
    max_num_patches: int,
    resample: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
) -> Patches:
    """Decode, resize to an aspect-preserving patch grid and patchify for a NaFlex checkpoint."""
    image = _open(data, max_pixels)
    width, height = _upright_size(image)
    target = naflex_size(height, width, patch_size, max_num_patches)
    box = _draft(image, (target[1], target[0])) if draft else None
    with _BUDGET.reserve(_decode_cost(image)):
        pixels = _resize(_finish(image, data), target, resample, box)
    return patchify(pixels, patch_size, max_num_patches)


def gpu_decodable(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> int | None:
    """The EXIF orientation of a JPEG that a batched GPU decode can take, or None for
    bytes to decode on CPU (other formats, CMYK). Reads the header only; raises
    errors.FrameError for what is not a sane image, as `decode` would."""
    image = _open(data, max_pixels)
    if image.format not in ("JPEG", "MPO") or image.mode not in ("RGB", "L"):
        return None
    return _orientation(image)


def preprocess_fixed(image: Image.Image, size: int | tuple[int, int], resample: int) -> UInt8Array:
    """Resize an RGB image to `size` (an int for square, or (height, width)); uint8 HWC.

    Equals the HF processor's resized pixels exactly: it round-trips the same uint8 RGB
    image through numpy and calls the same Pillow resize with no reducing gap.
    """
    height, width = (size, size) if isinstance(size, int) else size
    return _resize(image, (height, width), resample, None)


def preprocess_naflex(
    image: Image.Image, patch_size: int, max_num_patches: int, resample: int
) -> Patches:
    """Resize an RGB image to the largest patch grid within `max_num_patches`, then patchify."""
    target = naflex_size(image.height, image.width, patch_size, max_num_patches)
    return patchify(_resize(image, target, resample, None), patch_size, max_num_patches)


def naflex_size(height: int, width: int, patch_size: int, max_num_patches: int) -> tuple[int, int]:
    """(height, width) in pixels, multiples of `patch_size`, as Siglip2ImageProcessor picks them.

    A copy of transformers' `get_image_size_for_max_num_patches`, including its binary search
    and tolerance, because any other rounding would pick a different grid for some sizes.
    """
    eps = 1e-5

    def scaled(scale: float, side: int) -> int:
        return max(patch_size, math.ceil(side * scale / patch_size) * patch_size)

    scale_min, scale_max = eps / 10, 100.0
    while (scale_max - scale_min) >= eps:
        scale = (scale_min + scale_max) / 2
        patches = (scaled(scale, height) / patch_size) * (scaled(scale, width) / patch_size)
        if patches <= max_num_patches:
            scale_min = scale
        else:
            scale_max = scale
    return scaled(scale_min, height), scaled(scale_min, width)


def patchify(pixels: UInt8Array, patch_size: int, max_num_patches: int) -> Patches:
    """Cut HWC pixels into patch rows ordered (y, x, channel) and zero-pad to max_num_patches."""
    height, width, channels = pixels.shape
    rows, columns = height // patch_size, width // patch_size
    grid = pixels.reshape(rows, patch_size, columns, patch_size, channels)
    patches = grid.transpose(0, 2, 1, 3, 4).reshape(rows * columns, -1)
    padded = np.zeros((max_num_patches, patches.shape[1]), dtype=np.uint8)
    padded[: rows * columns] = patches
    mask = np.zeros((max_num_patches,), dtype=np.int32)
    mask[: rows * columns] = 1
    return Patches(pixels=padded, mask=mask, spatial_shape=(rows, columns))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert like transformers' `convert_to_rgb`: transparency is composited onto white.

    Other modes go through Pillow's `convert("RGB")` exactly as HF does, including its
    16-bit behaviour (mode I;16 values above 255 saturate), so vectors match the reference.
    """
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


class DecodeBudget:
    """A counting budget of bytes shared by concurrent decodes (a condition variable)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        """Hold `cost` bytes (at most the whole budget) while the block runs."""
        cost = max(0, min(cost, self.limit))
        with self._condition:
            self._condition.wait_for(lambda: self.used + cost <= self.limit)
            self.used += cost
        try:
            yield
        finally:
            with self._condition:
                self.used -= cost
                self._condition.notify_all()


_BUDGET = DecodeBudget(DECODE_BUDGET_BYTES)


def limit_decode_memory(limit: int) -> None:
    """Set this process's decode budget (a decode process takes its share of the whole)."""
    global _BUDGET
    _BUDGET = DecodeBudget(limit)


def _decode_cost(image: Image.Image) -> int:
    """Bytes a decode of `image` (at its current, possibly drafted, size) may peak at.

    Measured per pixel, 6000x6000: RGB JPEG/PNG 4.1, palette 5.1, 16-bit grey 6.1, CMYK
    8.1, RGBA 20 (the pixels, the white background, the composite and the RGB result).
    """
    width, height = image.size
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        per_pixel = 20
    elif image.mode in ("RGB", "L"):
        per_pixel = 5
    else:
        per_pixel = 9
    return width * height * per_pixel


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the format and read the header only; refuse what is not a sane image."""
    if not data:
        raise errors.FrameError("not an image: empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own limit (~89 MP warns, ~179 MP raises) fired while reading the header;
        # with warnings as errors the warning arrives here as an exception too.
        raise errors.FrameError(f"image too large: {error}") from None
    except Exception as error:
        raise errors.FrameError(f"not an image: {_describe(data, error)}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise errors.FrameError(f"not an image: {image.format} header says {width}x{height}")
    if width * height > max_pixels:
        raise errors.FrameError(
            f"image too large: {width}x{height} {image.format} "
            f"({width * height / 1e6:.0f} MP > limit {max_pixels / 1e6:.0f} MP)"
        )
    return image


def _finish(image: Image.Image, data: bytes) -> Image.Image:
    """Decode the pixels of the first frame, convert to RGB and apply EXIF orientation."""
    try:
        image.load()
        orientation = _orientation(image)
        rgb = to_rgb(image)
        rgb = _transpose(rgb, orientation)
    except MemoryError:
        raise
    except Exception as error:
        # Anything Pillow raises while decoding these bytes is a property of the bytes
        # (truncated, corrupt, unsupported variant), so the frame can never succeed.
        fmt = image.format or "image"
        raise errors.FrameError(f"corrupt {fmt}: {_describe(data, error)}") from None
    return rgb


def _orientation(image: Image.Image) -> int:
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _transpose(image: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation to pixels (the same table `ImageOps.exif_transpose` uses)."""
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return image if method is None else image.transpose(method)


def _resize(
    image: Image.Image,
    size: tuple[int, int],
    resample: int,
    box: tuple[float, float, float, float] | None,
) -> UInt8Array:
    """Resize to (height, width) with Pillow, as the HF processor does; uint8 HWC."""
    height, width = size
    resized = image.resize((width, height), resample=Image.Resampling(resample), box=box)
    return np.asarray(resized, dtype=np.uint8)


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header."""
    width, height = image.size
    if _orientation(image) in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def _draft(image: Image.Image, target: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """Ask a JPEG decoder for the largest DCT reduction keeping `target` (upright w, h).

    Returns the box, in the reduced upright image, that covers exactly the original image
    (the reduced size is rounded up), for the final resize; None when nothing was reduced.
    """
    if image.format not in ("JPEG", "MPO"):
        return None
    orientation = _orientation(image)
    width, height = target
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    original = image.size
    # Pillow picks the largest reduction keeping both stored sides >= the requested size.
    result = image.draft("RGB", (width, height))
    if result is None or image.size == original:
        return None
    return _orient_box(result[1], image.size, orientation)


def _orient_box(
    box: tuple[float, float, float, float], size: tuple[int, int], orientation: int
) -> tuple[float, float, float, float]:
    """Where `box` of a stored image of `size` (w, h) lands once the EXIF orientation is
    applied (the reduced image's rounded-up edge is at its right and bottom)."""
    left, top, right, bottom = box
    width, height = size
    return {
        1: (left, top, right, bottom),
        2: (width - right, top, width - left, bottom),  # mirror left-right
        3: (width - right, height - bottom, width - left, height - top),  # 180
        4: (left, height - bottom, right, height - top),  # mirror top-bottom
        5: (top, left, bottom, right),  # transpose
        6: (height - bottom, left, height - top, right),  # 90 clockwise
        7: (height - bottom, width - right, height - top, width - left),  # transverse
        8: (top, width - right, bottom, width - left),  # 90 counter-clockwise
    }[orientation]


def _describe(data: bytes, error: Exception) -> str:
    """One line naming what went wrong and what the bytes look like.

    Never the bytes themselves: error rows are readable by every reader role, and a
    `file://` URI may name any file the daemon can read (its first bytes could be a
    secret), so only a coarse kind is named.
    """
    if isinstance(error, UnidentifiedImageError):
        return f"{_kind(data)}, {len(data)} bytes"
    return f"{error} ({len(data)} bytes)"


def _kind(data: bytes) -> str:
    head = data.lstrip()[:16]
    if head[:1] == b"<":
        return "markup (HTML/XML?)"
    if head[:1] in (b"{", b"["):
        return "text (JSON?)"
    if data[4:8] == b"ftyp":
        return "ISO media (HEIC/MP4?), not a supported image"
    if head[:4] == b"%PDF":
        return "PDF"
    if head.isascii() and all(32 <= byte < 127 or byte in (9, 10, 13) for byte in head):
        return "text"
    return "unrecognised format"
