"""Decoding and preprocessing: bad bytes become FrameErrors, good ones match the HF recipe."""

from __future__ import annotations

import concurrent.futures
import io
import resource
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps
from transformers.models.siglip2 import image_processing_pil_siglip2 as hf_siglip2

from argus_embedder import errors
from argus_embedder.pipeline import images
from tests.unit.test_embedder import encode, textured

BILINEAR = int(Image.Resampling.BILINEAR)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int) -> bytes:
    """A real 1-bit grayscale PNG of side x side zero pixels: ~100 KB that inflate to GBs."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_part = 1000
    body = b"".join(compressor.compress(row * rows_per_part) for _ in range(side // rows_per_part))
    body += compressor.compress(row * (side % rows_per_part)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", body)
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims width x height."""
    data = bytearray(encode(textured(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def jpeg_720p() -> bytes:
    return encode(textured(1280, 720), "JPEG", quality=90)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an image: empty"),
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not an image: markup"),
        (b"\x00\x01garbage" * 50, "not an image: unrecognised format"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image"),
    ],
    ids=["zero-bytes", "html", "garbage", "eps-not-allowed"],
)
def test_non_images_are_frame_errors(data: bytes, message: str) -> None:
    with pytest.raises(errors.FrameError, match=message):
        images.decode(data)


def test_truncated_jpeg_is_a_frame_error(jpeg_720p: bytes) -> None:
    with pytest.raises(errors.FrameError, match="corrupt JPEG: image file is truncated"):
        images.decode(jpeg_720p[: len(jpeg_720p) // 2])
    with pytest.raises(errors.FrameError, match="not an image"):
        images.decode(jpeg_720p[:20])


def test_png_decompression_bomb_is_refused_fast_and_small() -> None:
    bomb = png_bomb(30_000)
    assert len(bomb) < 200_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(errors.FrameError, match="image too large"):
        images.decode(bomb)
    assert time.perf_counter() - started < 1.0
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 100_000  # decoding would take ~900 MB


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (20_000, 20_000, "image too large"),  # beyond Pillow's own hard limit
        (10_000, 10_000, "image too large"),  # between Pillow's warning and error limits
        (10_000, 6_000, r"image too large: 10000x6000 JPEG \(60 MP > limit 50 MP\)"),
    ],
)
def test_enormous_images_are_refused_from_the_header(width: int, height: int, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(errors.FrameError, match=message):
        images.prepare_fixed(jpeg_claiming(width, height), (224, 224), BILINEAR)
    assert time.perf_counter() - started < 1.0


def test_pixel_limit_is_a_parameter() -> None:
    data = encode(textured(100, 100), "PNG")
    assert images.decode(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(errors.FrameError, match="100x100"):
        images.decode(data, max_pixels=9_999)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = images.decode(buffer.getvalue())
    assert decoded.mode == "RGB"
    assert decoded.getpixel((5, 5)) == (255, 0, 0)


def test_transparency_is_composited_onto_white() -> None:
    image = Image.new("RGBA", (4, 2), (10, 20, 30, 255))
    image.putpixel((0, 0), (10, 20, 30, 0))
    decoded = images.decode(encode(image, "PNG"))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 0)) == (10, 20, 30)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    source = textured(64, 32)
    data = encode(source, "JPEG", quality=95, exif=exif.tobytes())
    decoded = images.decode(data)
    assert decoded.size == (32, 64)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(expected))


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "LA", "RGB"])
def test_every_mode_becomes_rgb_like_hf(mode: str) -> None:
    source = textured(48, 40)
    image = Image.fromarray(np.asarray(source.convert("L"), dtype=np.uint16) * 200)
    if mode != "I;16":
        image = source.convert(mode) if mode != "P" else source.quantize(32)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    data = encode(image, fmt)
    decoded = images.decode(data)
    expected = images.to_rgb(Image.open(io.BytesIO(data)))
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(expected))


def test_naflex_grid_matches_transformers() -> None:
    for height, width in [(720, 1280), (301, 97), (1, 5000), (5000, 1), (640, 640), (7, 13)]:
        for patch, limit in [(16, 256), (16, 1024), (14, 64)]:
            expected = hf_siglip2.get_image_size_for_max_num_patches(height, width, patch, limit)
            assert images.naflex_size(height, width, patch, limit) == expected


def test_patchify_matches_transformers() -> None:
    pixels = np.asarray(textured(48, 32))
    ours = images.patchify(pixels, 16, 10)
    theirs = hf_siglip2.convert_image_to_patches(pixels.transpose(2, 0, 1), 16)
    np.testing.assert_array_equal(ours.pixels[:6], theirs)
    assert not ours.pixels[6:].any()
    assert ours.mask.tolist() == [1] * 6 + [0] * 4
    assert ours.spatial_shape == (2, 3)


@pytest.mark.parametrize(
    ("size", "target", "reduced"),
    [
        ((1920, 1080), (224, 224), (480, 270)),  # 1/4: 1/8 would leave 135 < 224
        ((1280, 720), (224, 224), (640, 360)),  # 1/2
        ((640, 480), (224, 224), (320, 240)),  # 1/2
        ((400, 300), (224, 224), (400, 300)),  # 1/2 would leave 150 < 224: full decode
        ((1280, 720), (64, 64), (160, 90)),  # 1/8, the smallest scale libjpeg has
    ],
)
def test_jpegs_decode_at_the_dct_floor(
    size: tuple[int, int], target: tuple[int, int], reduced: tuple[int, int]
) -> None:
    image = Image.open(io.BytesIO(encode(textured(*size), "JPEG", quality=90)))
    images._draft(image, target)
    assert image.size == reduced


def test_draft_stays_close_where_used(jpeg_720p: bytes) -> None:
    for data in (jpeg_720p, encode(textured(1920, 1080, seed=3), "JPEG", quality=90)):
        for side in (64, 224):
            exact = images.prepare_fixed(data, (side, side), BILINEAR, draft=False)
            drafted = images.prepare_fixed(data, (side, side), BILINEAR, draft=True)
            error = drafted.astype(float) - exact
            assert error.any(), "expected a reduced JPEG decode to be used"
            # Levels of 255, measured 0.9-2.1 (1/8 scale for 64 px); the embeddings are
            # what DESIGN §5 bounds (tests/unit/test_decode_parity.py).
            assert np.sqrt((error**2).mean()) < 3.0
    naflex_exact = images.prepare_naflex(data, 16, 256, BILINEAR, draft=False)
    naflex_drafted = images.prepare_naflex(data, 16, 256, BILINEAR, draft=True)
    assert naflex_drafted.spatial_shape == naflex_exact.spatial_shape
    np.testing.assert_array_equal(naflex_drafted.mask, naflex_exact.mask)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_rotated_jpegs_draft_with_the_box_oriented(orientation: int) -> None:
    # An odd size leaves a partial block at the right and bottom of the reduced image: a
    # box left unoriented would stretch the picture by that sliver, shifting it visibly.
    picture = textured(1283, 725, seed=4)
    exif = Image.Exif()
    exif[0x0112] = orientation
    rotated = encode(picture, "JPEG", quality=95, exif=exif.tobytes())
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(rotated)))
    target = (150, 100)  # (height, width): not square, so a swapped side would show
    drafted = images.prepare_fixed(rotated, target, BILINEAR).astype(float)
    exact = images.preprocess_fixed(upright.convert("RGB"), target, BILINEAR)
    # Levels of 255: ~1 measured; 2.6-8 with the box left unoriented.
    assert np.abs(drafted - exact).mean() < 2.0
    assert drafted.shape == (*target, 3)


def test_decoding_in_threads_gives_the_same_pixels(jpeg_720p: bytes) -> None:
    inputs = [jpeg_720p, encode(textured(300, 500, seed=1), "PNG"), b"", jpeg_720p[:5000]] * 6

    def run(data: bytes) -> np.ndarray | str:
        try:
            return images.prepare_fixed(data, (64, 64), BILINEAR)
        except errors.FrameError as error:
            return str(error)

    sequential = [run(data) for data in inputs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(run, inputs))
    for one, other in zip(sequential, threaded, strict=True):
        if isinstance(one, str):
            assert one == other
        else:
            np.testing.assert_array_equal(one, other)
