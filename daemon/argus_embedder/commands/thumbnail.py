"""Scaled-down frame images for the search page (`/frames/ID?width=N`).

A page of results is a few dozen frames; sending each at full size (a 4K frame is
megabytes) would make the page slow and the server's uplink the bottleneck.
"""

from __future__ import annotations

import io
import os
import threading

from PIL import Image

from argus_embedder.pipeline import images

MIN_WIDTH = 16
MAX_WIDTH = 1024  # bounded: a width is a cost the client chooses
QUALITY = 85
# Scaling is CPU work in the request's thread; more at once than cores only queue in memory.
_SCALING = threading.BoundedSemaphore(os.cpu_count() or 1)


def scale(data: bytes, width: int) -> bytes:
    """`data` as a JPEG at most `width` pixels wide (the aspect ratio kept), or `data`
    itself when it is no wider. Raises errors.FrameError for what is not a sane image."""
    with _SCALING:
        # decode() checks the header's size before any pixel (no decompression bomb)
        # and gives an upright RGB image whatever the format and EXIF say.
        image = images.decode(data)
        if image.width <= width:
            return data
        height = max(1, round(image.height * width / image.width))
        small = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=2.0)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=QUALITY, optimize=True)
        return buffer.getvalue()
