"""One lifecycle for every background thread: start, step, back off, stop, join, supervise.

A service is a named thread that calls its `step` over and over: `step` returns
the seconds until its next call (None: the service's interval). An exception in
a step is logged and retried with exponential backoff, so a flaky database or
a bug hit once does not end the thread; a service whose steps keep failing
(`max_failures` in a row) or whose thread ends for any other reason is dead.
Whoever supervises it asks `failure()`: the daemon's /livez fails on a dead
service, and the worker stops claiming when its lease keeper is dead, since
every lease it holds would lapse.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from argus_embedder import errors

log = logging.getLogger(__name__)

_SLICE = 0.5  # seconds; how quickly a waiting service notices a stop request
_BACKOFF_MAX = 30.0

Step = Callable[[], float | None]


class Service:
    """A supervised background thread. Use as a context manager."""

    def __init__(
        self,
        name: str,
        step: Step,
        *,
        interval: float,
        first_delay: float = 0.0,
        max_failures: int | None = None,
        on_stop: Callable[[], None] | None = None,
        stop: threading.Event | None = None,
        expected: tuple[type[BaseException], ...] = (errors.ArgusError, OSError),
    ) -> None:
        self.name = name
        self.interval = interval
        self._step = step
        self._first_delay = first_delay
        self._max_failures = max_failures
        self._on_stop = on_stop
        self._outer_stop = stop  # the daemon's shutdown, when it should end us too
        self._expected = expected  # failures logged in one line, without a traceback
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: str | None = None
        self.failures = 0  # consecutive failed steps

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        self.join()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"argus-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 15.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stopping(self) -> bool:
        return self._stop.is_set() or (self._outer_stop is not None and self._outer_stop.is_set())

    def failure(self) -> str | None:
        """Why the service died, or None while it runs (or was stopped on purpose)."""
        if self._failure is not None:
            return self._failure
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self.stopping():
            return f"{self.name} ended unexpectedly"
        return None

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early on stop; True when stopping."""
        remaining = seconds
        while remaining > 0 and not self.stopping():
            slice_ = min(remaining, _SLICE)
            self._stop.wait(slice_)
            remaining -= slice_
        return self.stopping()

    def _main(self) -> None:
        try:
            if self.wait(self._first_delay):
                return
            while not self.stopping():
                if self.wait(self._run_step()):
                    return
        except BaseException as error:  # the thread itself broke: supervisors must know
            if self._failure is None:
                self._failure = f"{self.name} died: {errors.first_line(error)}"
            log.exception("%s died", self.name)
        finally:
            self._stopped()

    def _run_step(self) -> float:
        try:
            delay = self._step()
        except Exception as error:
            self.failures += 1
            if self._max_failures is not None and self.failures >= self._max_failures:
                self._failure = (
                    f"{self.name} failed {self.failures} times in a row: {errors.first_line(error)}"
                )
                raise
            # Doubling from the service's own interval: a lease keeper must retry well
            # within a lease, a periodic pass need not hammer a failing database.
            backoff = min(_BACKOFF_MAX, max(self.interval, 0.1) * 2.0 ** min(self.failures - 1, 5))
            log.warning(
                "%s failed (%s); retrying in %.0fs",
                self.name,
                errors.first_line(error),
                backoff,
                exc_info=not isinstance(error, self._expected),
            )
            return backoff
        self.failures = 0
        return self.interval if delay is None else delay

    def _stopped(self) -> None:
        if self._on_stop is None:
            return
        try:
            self._on_stop()
        except Exception as error:  # best effort at stop: never hang or raise on the way out
            log.debug("%s: stop hook failed: %s", self.name, errors.first_line(error))
