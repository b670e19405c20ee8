"""The lifecycle helper every background thread runs on: steps, backoff, supervision."""

from __future__ import annotations

import threading
import time

import pytest

from argus_embedder import errors, lifecycle
from tests.support import wait_for


def test_a_service_steps_until_stopped_then_runs_its_stop_hook() -> None:
    steps: list[float] = []
    stopped = threading.Event()
    service = lifecycle.Service(
        "counter", lambda: steps.append(time.monotonic()), interval=0.01, on_stop=stopped.set
    )
    with service:
        wait_for(lambda: len(steps) >= 3, 5, "three steps")
        assert service.failure() is None
    assert stopped.is_set()
    assert service.failure() is None  # stopped on purpose is not a failure
    count = len(steps)
    time.sleep(0.05)
    assert len(steps) == count


def test_a_failing_step_is_retried_with_backoff_and_the_service_lives_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug hit once")

    service = lifecycle.Service("flaky", flaky, interval=0.01)
    service._run_step = _fast_backoff(service)  # type: ignore[method-assign]
    with caplog.at_level("WARNING"), service:
        wait_for(lambda: len(calls) >= 3, 5, "steps after the failure")
        assert service.failure() is None
        assert service.failures == 0
    assert "flaky failed (a bug hit once)" in caplog.text


def test_a_step_that_keeps_failing_kills_the_service_and_says_why() -> None:
    def broken() -> None:
        raise RuntimeError("no such thing\nwith a second line")

    service = lifecycle.Service("keeper", broken, interval=0.01, max_failures=2)
    service._run_step = _fast_backoff(service)  # type: ignore[method-assign]
    with service:
        wait_for(lambda: service.failure() is not None, 5, "the service to die")
        assert service.failure() == "keeper failed 2 times in a row: no such thing"


def test_a_thread_that_ends_on_its_own_is_reported() -> None:
    service = lifecycle.Service("quitter", lambda: None, interval=0.01)
    service._main = lambda: None  # type: ignore[method-assign]
    service.start()
    service.join()
    assert service.failure() == "quitter ended unexpectedly"


def test_the_daemons_stop_event_ends_the_service() -> None:
    stop = threading.Event()
    service = lifecycle.Service("periodic", lambda: 60.0, interval=60, stop=stop)
    service.start()
    stop.set()
    service.join(timeout=5)
    assert service._thread is not None and not service._thread.is_alive()
    assert service.failure() is None


def test_the_step_chooses_its_next_delay() -> None:
    times: list[float] = []

    def step() -> float:
        times.append(time.monotonic())
        return 0.2

    with lifecycle.Service("paced", step, interval=0.0):
        wait_for(lambda: len(times) >= 2, 5, "two steps")
    assert times[1] - times[0] >= 0.19


def test_first_line() -> None:
    assert errors.first_line(ValueError("\n  first\nsecond")) == "first"
    assert errors.first_line(ValueError("")) == "ValueError"
    assert errors.first_line(KeyError()) == "KeyError"


def _fast_backoff(service: lifecycle.Service) -> object:
    """The real step runner, minus its seconds-long backoff."""
    original = service._run_step

    def run_step() -> float:
        return min(original(), 0.01)

    return run_step
