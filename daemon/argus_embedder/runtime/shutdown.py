"""Graceful shutdown: the first SIGTERM/SIGINT sets an event, a second exits at once."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

log = logging.getLogger(__name__)


@contextlib.contextmanager
def handle_signals(
    event: threading.Event, on_first: Callable[[], None] | None = None
) -> Iterator[threading.Event]:
    """Install SIGTERM/SIGINT handlers for the block's duration (main thread only)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info(
            "%s: draining (finish the current batch, release the job)", signal.Signals(signum).name
        )
        event.set()
        if on_first is not None:
            on_first()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
