"""The wake-up: an idle loop sleeps until a NOTIFY, the poll interval or shutdown.

The LISTEN connection exists only while the loop is idle. A busy loop claims
on its own, and a LISTEN connection left unread that long would pin the
server's notification queue, shared by the cluster: past half full the schema
stops notifying (migration 0015), and wake-ups and completions go unannounced.
So the loop closes it as soon as it has work, and a fresh one claims once more
right after it LISTENs (a job enqueued just before woke nobody). Polling alone works
too (behind PgBouncer in transaction mode): a lost notification only delays.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from argus_embedder import db, errors

log = logging.getLogger(__name__)

_SLICE = 0.5  # seconds; how quickly an idle loop notices a shutdown request


class Wakeup:
    """LISTEN/poll for one worker. Use as a context manager; the loop thread only."""

    def __init__(
        self,
        url: str,
        *,
        poll_interval: float,
        shutdown: threading.Event,
        beat: Callable[[], None],
    ) -> None:
        self._url = url
        self._poll_interval = poll_interval
        self._shutdown = shutdown
        self._beat = beat
        self._listener: psycopg.Connection[Any] | None = None

    def __enter__(self) -> Wakeup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.busy()

    def wait(self) -> None:
        """Sleep until a NOTIFY, the poll interval, or shutdown, whichever comes first."""
        deadline = time.monotonic() + self._poll_interval
        while not self._shutdown.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._beat()
            fresh = self._listener is None
            listener = self._listen()
            if fresh and listener is not None:
                return  # claim once more: a job enqueued just before LISTEN woke nobody
            if listener is None:
                self._shutdown.wait(min(left, _SLICE))
                continue
            try:
                for _ in listener.notifies(timeout=min(left, _SLICE), stop_after=1):
                    return
            except psycopg.OperationalError:
                self.busy()

    def busy(self) -> None:
        """The loop has work: stop listening, so nothing unread pins the notify queue."""
        if self._listener is not None:
            with contextlib.suppress(psycopg.Error):
                self._listener.close()
        self._listener = None

    def _listen(self) -> psycopg.Connection[Any] | None:
        if self._listener is None or self._listener.closed:
            try:
                self._listener = db.connect(self._url, autocommit=True, vector=False)
                self._listener.execute(db.queries()["listen"])
            except (errors.ArgusError, psycopg.Error) as error:
                log.debug("LISTEN unavailable, polling only: %s", errors.first_line(error))
                self.busy()
        return self._listener
