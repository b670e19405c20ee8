"""Liveness, readiness and the HTTP endpoints, over a real socket."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from argus_embedder import errors, metrics
from argus_embedder.runtime import health


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingCheck:
    """A database probe that counts its calls and fails while `error` is set."""

    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.calls = 0
        self.error = error
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.error is not None:
            raise self.error


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> health.HealthState:
    return health.HealthState(heartbeat_timeout=30, clock=clock)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def port(state: health.HealthState) -> Iterator[int]:
    with health.serve(_free_port(), state, host="127.0.0.1") as bound:
        assert bound is not None
        yield bound


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def _make_ready(state: health.HealthState, check: CountingCheck | None = None) -> CountingCheck:
    check = check or CountingCheck()
    state.set_db_check(check)
    state.set_model_warm()
    state.beat()
    return check


# --- HealthState ---------------------------------------------------------------


def test_live_before_the_first_beat_then_until_the_heartbeat_is_stale(
    state: health.HealthState, clock: FakeClock
) -> None:
    live, reason = state.live()
    assert live and "starting" in reason
    state.beat()
    clock.now += 29
    assert state.live() == (True, "ok")
    clock.now += 2
    live, reason = state.live()
    assert not live
    assert "31.0s old" in reason and "stuck" in reason
    state.beat()
    assert state.live() == (True, "ok")


def test_beat_publishes_the_heartbeat_timestamp(state: health.HealthState) -> None:
    before = time.time()
    state.beat()
    assert before <= metrics.value("argus_embedder_loop_heartbeat_timestamp_seconds") <= time.time()


def test_ready_needs_a_warm_model_a_reachable_database_and_no_drain(
    state: health.HealthState, clock: FakeClock
) -> None:
    assert state.ready() == (False, "model not warm yet")
    assert metrics.value("argus_embedder_ready") == 0

    state.set_model_warm()
    assert state.ready() == (False, "database unreachable: no database check configured")

    check = CountingCheck(
        error=OSError("connection to postgresql://argus:hunter2@db:5432/x refused")
    )
    state.set_db_check(check)
    ready, reason = state.ready()
    assert not ready
    assert reason.startswith("database unreachable: OSError: connection to")
    assert "hunter2" not in reason

    check.error = None
    clock.now += health.DB_CHECK_TTL + 0.1  # past the cached failure
    assert state.ready() == (True, "ok")
    assert metrics.value("argus_embedder_ready") == 1

    state.set_draining()
    assert metrics.value("argus_embedder_ready") == 0
    assert state.ready() == (False, "draining: shutting down")


def test_the_database_check_is_cached(state: health.HealthState, clock: FakeClock) -> None:
    check = _make_ready(state)
    for _ in range(5):
        assert state.ready()[0]
    assert check.calls == 1
    clock.now += health.DB_CHECK_TTL + 0.1
    assert state.ready()[0]
    assert check.calls == 2


def test_concurrent_scrapes_share_one_database_check(state: health.HealthState) -> None:
    check = _make_ready(state, CountingCheck(delay=0.05))
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(state.ready()[0])) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 8
    assert check.calls == 1


def test_details_are_copied(state: health.HealthState) -> None:
    state.set_detail("device", "cpu (fallback: no CUDA)")
    details = state.details()
    details["device"] = "changed"
    assert state.details() == {"device": "cpu (fallback: no CUDA)"}


def test_heartbeat_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        health.HealthState(heartbeat_timeout=0)


# --- HTTP ----------------------------------------------------------------------


def test_metrics_endpoint_serves_the_registry(port: int, state: health.HealthState) -> None:
    _make_ready(state)
    status, content_type, body = _get(port, "/metrics")
    assert status == 200
    assert content_type == health.METRICS_CONTENT_TYPE
    text = body.decode()
    assert "argus_embedder_jobs_claimed_total" in text
    # A scrape refreshes the ready gauge without anyone asking /readyz.
    assert "argus_embedder_ready 1.0" in text


def test_livez_follows_the_heartbeat_and_never_touches_the_database(
    port: int, state: health.HealthState, clock: FakeClock
) -> None:
    check = _make_ready(state, CountingCheck(error=OSError("down")))
    check.calls = 0
    status, content_type, body = _get(port, "/livez")
    assert (status, body) == (200, b"ok\n")
    assert content_type.startswith("text/plain")
    clock.now += 31
    status, _, body = _get(port, "/livez")
    assert status == 503
    assert b"heartbeat" in body
    assert check.calls == 0


def test_readyz_says_why_in_json(port: int, state: health.HealthState, clock: FakeClock) -> None:
    state.set_detail("device", "cpu (fallback: no CUDA)")
    status, content_type, body = _get(port, "/readyz")
    assert status == 503
    assert content_type == "application/json"
    assert json.loads(body) == {
        "ready": False,
        "reason": "model not warm yet",
        "details": {"device": "cpu (fallback: no CUDA)"},
    }
    _make_ready(state)
    status, _, body = _get(port, "/readyz?verbose=1")
    assert status == 200
    assert json.loads(body)["reason"] == "ok"
    state.set_draining()
    status, _, body = _get(port, "/readyz")
    assert status == 503
    assert json.loads(body)["reason"].startswith("draining")


def test_unknown_paths_404_and_head_has_no_body(port: int) -> None:
    status, _, body = _get(port, "/")
    assert status == 404
    assert b"/metrics" in body
    status, _, body = _get(port, "/livez", method="HEAD")
    assert (status, body) == (200, b"")


def test_requests_are_not_logged(
    state: health.HealthState, capfd: pytest.CaptureFixture[str]
) -> None:
    with health.serve(_free_port(), state, host="127.0.0.1") as bound:
        assert bound is not None
        for path in ("/metrics", "/livez", "/readyz", "/nope"):
            _get(bound, path)
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_port_zero_disables_the_server(state: health.HealthState) -> None:
    with health.serve(0, state) as bound:
        assert bound is None
        assert not [t for t in threading.enumerate() if t.name == "argus-http"]


def test_the_server_stops_listening_on_exit(state: health.HealthState) -> None:
    port = _free_port()
    with health.serve(port, state, host="127.0.0.1"):
        assert _get(port, "/livez")[0] == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not [t for t in threading.enumerate() if t.name == "argus-http"]


def test_an_ipv6_host_listens_on_ipv6(state: health.HealthState) -> None:
    """One server class for both families (health's and serve's): the host picks it."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    port = _free_port()
    with health.serve(port, state, host="::1"):
        connection = http.client.HTTPConnection("::1", port, timeout=5)
        try:
            connection.request("GET", "/livez")
            assert connection.getresponse().status == 200
        finally:
            connection.close()


def test_a_busy_port_is_a_clear_error(state: health.HealthState) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with (
            pytest.raises(errors.ArgusError, match=f"cannot listen on 127.0.0.1:{busy}"),
            health.serve(busy, state, host="127.0.0.1"),
        ):
            pass


def test_a_dead_background_service_fails_liveness() -> None:
    class Service:
        dead: str | None = None

        def failure(self) -> str | None:
            return self.dead

    state = health.HealthState(heartbeat_timeout=60)
    service = Service()
    state.watch(service)
    state.beat()
    assert state.live() == (True, "ok")
    service.dead = "lease-keeper failed 5 times in a row: boom"
    assert state.live() == (
        False,
        "background service dead: lease-keeper failed 5 times in a row: boom",
    )


def test_a_silent_connection_is_closed_and_others_still_answer_regression(
    state: health.HealthState,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A client that connects and sends nothing (or half a request) held one of the
    metrics server's threads forever: no socket timeout. Now it is closed after the
    server's IDLE_SECONDS (made 0.5 s here), and scrapes beside it still answer."""
    monkeypatch.setattr(health, "IDLE_SECONDS", 0.5, raising=False)
    with health.serve(_free_port(), state, host="127.0.0.1") as bound:
        assert bound is not None
        silent = socket.create_connection(("127.0.0.1", bound), timeout=5)
        half = socket.create_connection(("127.0.0.1", bound), timeout=5)
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert _get(bound, "/livez")[0] in (200, 503)
        started = time.monotonic()
        for sock in (silent, half):
            with sock:
                assert sock.recv(1024) == b""  # closed by the server, within the timeout
        assert time.monotonic() - started < 4
    assert capfd.readouterr().err == ""  # a timeout is no traceback on stderr
