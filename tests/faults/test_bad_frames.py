"""Scenario 4: bad frames. Each becomes a clear error row (or a vector, for the valid but
odd ones); the job succeeds, the daemon stays alive and its memory stays bounded."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from PIL import Image

from argus_embedder import errors
from argus_embedder.pipeline import images
from tests import support
from tests.conftest import S3Endpoint, textured_jpeg
from tests.faults import harness, invariants
from tests.faults.conftest import add_videos, all_final, small_jpeg


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def flat_png(width: int, height: int, *, color_type: int, bit_depth: int, channels: int) -> bytes:
    """A PNG of zeros written row by row, so a 2.5-gigapixel bomb is built in ~1 s and
    ~300 kB without ever holding its pixels. Its IDAT really inflates to the full size."""
    row = b"\x00" * (1 + (width * channels * bit_depth + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (40, 30), color) for color in ("red", "green", "blue")]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)


GIANT_RGBA = (7000, 7000)  # 49 MP: under the pixel limit, ~0.9 GB to decode


@pytest.fixture(scope="module")
def bad_objects() -> dict[str, bytes]:
    noise = np.random.default_rng(7).integers(0, 256, (30, 40), dtype=np.uint16) * 250
    jpeg = textured_jpeg(3, (640, 360))
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "zero.jpg": b"",
        "page.jpg": b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>",
        "bomb.png": flat_png(50_000, 50_000, color_type=0, bit_depth=1, channels=1),
        "huge.png": flat_png(20_000, 20_000, color_type=0, bit_depth=8, channels=1),
        "giant-rgba.png": flat_png(*GIANT_RGBA, color_type=6, bit_depth=8, channels=4),
        "cmyk.jpg": encoded(Image.new("CMYK", (40, 30), (10, 200, 30, 5)), "JPEG"),
        "sixteen-bit.png": encoded(Image.fromarray(noise), "PNG"),
        "animated.gif": animated("GIF"),
        "animated.webp": animated("WEBP"),
        "animated.png": animated("PNG"),
        "good.jpg": small_jpeg(11),
    }


def expectations(bucket: str) -> list[tuple[str, str | None]]:
    """(image_uri, expected error substring); None: a vector is expected."""
    s3 = f"s3://{bucket}"
    return [
        (f"{s3}/bad/truncated.jpg", "corrupt JPEG"),
        (f"{s3}/bad/zero.jpg", "empty (0 bytes)"),
        (f"{s3}/bad/page.jpg", "markup (HTML/XML?)"),
        (f"{s3}/bad/bomb.png", "image too large"),
        (f"{s3}/bad/huge.png", "image too large"),
        (f"{s3}/bad/giant-rgba.png", None),
        (f"{s3}/bad/cmyk.jpg", None),
        (f"{s3}/bad/sixteen-bit.png", None),
        (f"{s3}/bad/animated.gif", None),
        (f"{s3}/bad/animated.webp", None),
        (f"{s3}/bad/animated.png", None),
        (f"{s3}/bad/good.jpg", None),
        ("http://example.invalid/frame.jpg", "unsupported scheme 'http'"),
        ("ftp://example.invalid/frame.jpg", "unsupported scheme 'ftp'"),
        ("s3://no-such-bucket-anywhere/frame.jpg", "NoSuchBucket"),
        (f"{s3}/bad/absent.jpg", "NoSuchKey"),
        ("s3:///no-bucket.jpg", "expected s3://bucket/key"),
        ("file:///nonexistent/frame.jpg", "no such file"),
        ("file:///tmp", "is a directory"),
        ("file://otherhost/etc/hostname", "expected file:///absolute/path"),
    ]


def test_bad_frames_become_clear_error_rows_and_memory_stays_bounded(
    audited: psycopg.Connection[Any],
    s3: S3Endpoint,
    fleet: harness.Fleet,
    bad_objects: dict[str, bytes],
) -> None:
    for name, data in bad_objects.items():
        s3.put(f"bad/{name}", data)
    cases = expectations(s3.bucket)
    giant = f"s3://{s3.bucket}/bad/giant-rgba.png"
    # Three giant frames in one batch: decoded side by side they would need ~2.6 GB.
    uris = [uri for uri, _ in cases] + [giant] * 2
    add_videos(audited, s3, 1, 8, prefix="warm-up")
    daemon = fleet.start(ARGUS_BATCH_SIZE="8").wait_ready()
    harness.wait_for(lambda: all_final(audited), 60, "the warm-up video")
    rss_before = daemon.rss_mb()
    peak_before = daemon.peak_rss_mb()

    started = time.monotonic()
    job_id = support.add_video(audited, "bad", uris)
    assert job_id is not None
    harness.wait_for(lambda: all_final(audited), 120, "the bad video's job")
    seconds = time.monotonic() - started
    job = support.job(audited, job_id)
    assert job["status"] == "succeeded", daemon.log()[-3000:]
    errors_expected = sum(1 for _, message in cases if message is not None)
    assert (job["frames_total"], job["frames_done"], job["frames_failed"]) == (
        len(uris),
        len(uris),
        errors_expected,
    )
    rows = {row["frame_index"]: row for row in support.embeddings(audited, "bad")}
    for index, (uri, message) in enumerate(cases):
        row = rows[index]
        if message is None:
            assert row["embedding"] is not None, (uri, row["error"])
        else:
            assert row["error"] is not None and message in row["error"], (uri, row["error"])
            assert len(row["error"]) < 500

    # Still alive and still working: a good video after the bad one.
    add_videos(audited, s3, 1, 8, prefix="after")
    harness.wait_for(lambda: all_final(audited), 60, "the video after the bad one")
    rss_after = daemon.rss_mb()
    peak_growth = daemon.peak_rss_mb() - max(peak_before, rss_before)
    figures = invariants.check_invariants(audited, daemons=[daemon])
    # One giant decode at a time (the decode budget): ~1 GB, not 4 x 0.9 GB.
    assert peak_growth < 1500, (peak_growth, daemon.log()[-2000:])
    assert rss_after - rss_before < 300, (rss_before, rss_after)
    fleet.drain()
    invariants.report(
        figures,
        "bad-frames",
        bad_uris=errors_expected,
        odd_but_valid=len(uris) - errors_expected,
        seconds=round(seconds, 1),
        rss_mb_before=round(rss_before),
        rss_mb_after=round(rss_after),
        peak_growth_mb=round(peak_growth),
    )


def test_decode_budget_makes_giant_decodes_take_turns() -> None:
    budget = images.DecodeBudget(100)
    inside: list[int] = []
    peak = [0]
    lock = threading.Lock()

    def decode(cost: int) -> None:
        held = min(cost, budget.limit)  # a decode bigger than the budget runs alone
        with budget.reserve(cost):
            with lock:
                inside.append(held)
                peak[0] = max(peak[0], sum(inside))
            time.sleep(0.02)
            with lock:
                inside.remove(held)

    threads = [threading.Thread(target=decode, args=(cost,)) for cost in [60, 60, 500, 10] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak[0] <= 100 and budget.used == 0


def test_bomb_is_refused_from_the_header_in_milliseconds(bad_objects: dict[str, bytes]) -> None:
    for name in ("bomb.png", "huge.png"):
        started = time.perf_counter()
        with pytest.raises(errors.FrameError, match="image too large"):
            images.prepare_fixed(bad_objects[name], (64, 64), 2)
        assert time.perf_counter() - started < 0.05


def test_file_uri_errors_never_echo_file_contents(tmp_path: Path) -> None:
    """A frame stage may name any local file; its bytes must not reach a readable error."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:hunter2-planted-secret:0:0\n")
    with pytest.raises(errors.FrameError) as caught:
        images.prepare_fixed(secret.read_bytes(), (64, 64), 2)
    assert "hunter2" not in str(caught.value) and "root" not in str(caught.value)
    assert "text" in str(caught.value)
