"""Liveness, readiness and the HTTP server that exposes them with /metrics.

The metrics are declared in the core (argus_embedder.metrics), where the loop and
the services count into them; this module only exposes that registry.

`/livez` answers from memory only (the loop's heartbeat), so a database outage
never gets a healthy process restarted; `/readyz` adds the model, the database
and draining, and is what a load balancer or an operator's dashboard asks.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import prometheus_client

from argus_embedder import errors, metrics, settings

log = logging.getLogger(__name__)

DB_CHECK_TTL = 2.0  # seconds a database check result is reused, so scrapes never hammer the DB
_REASON_LIMIT = 300  # characters of an exception kept in a reason
METRICS_CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


class Supervised(Protocol):
    """What /livez asks of a background service (lifecycle.Service)."""

    def failure(self) -> str | None: ...


class HealthState:
    """What the loop, the model and the shutdown path report; read by the HTTP handlers.

    Thread-safe: the worker thread writes, server threads read. `clock` is the
    monotonic clock (a parameter so tests can move time without sleeping).
    """

    def __init__(
        self,
        heartbeat_timeout: float,
        *,
        db_check_ttl: float = DB_CHECK_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if heartbeat_timeout <= 0:
            raise ValueError("heartbeat_timeout must be positive")
        self.heartbeat_timeout = heartbeat_timeout
        self._db_check_ttl = db_check_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()  # one database check at a time
        self._last_beat: float | None = None
        self._model_warm = False
        self._draining = False
        self._db_check: Callable[[], None] | None = None
        self._db_result: tuple[float, str | None] | None = None  # (checked at, error or None)
        self._details: dict[str, str] = {}
        self._services: list[Supervised] = []

    def beat(self) -> None:
        """The loop went round: liveness is fresh again."""
        with self._lock:
            self._last_beat = self._clock()
        metrics.LOOP_HEARTBEAT.set(time.time())

    def set_model_warm(self, warm: bool = True) -> None:
        """The model is loaded and has run one forward pass (or is gone again)."""
        with self._lock:
            self._model_warm = warm

    def set_draining(self) -> None:
        """Shutdown began: stop advertising readiness for good."""
        with self._lock:
            self._draining = True
        metrics.READY.set(0)

    def set_db_check(self, check: Callable[[], None]) -> None:
        """Install the database probe: a callable that raises when the database is unreachable.

        It should carry its own short timeout (e.g. connect_timeout); its result
        is cached for `db_check_ttl` seconds.
        """
        with self._lock:
            self._db_check = check
            self._db_result = None

    def set_detail(self, key: str, value: str) -> None:
        """A fact shown in the /readyz body, e.g. device="cpu (fallback: no CUDA)"."""
        with self._lock:
            self._details[key] = value

    def details(self) -> dict[str, str]:
        """A copy of the facts set with set_detail."""
        with self._lock:
            return dict(self._details)

    def watch(self, *services: Supervised) -> None:
        """Background services whose death makes the daemon not live (systemd restarts it)."""
        with self._lock:
            self._services.extend(services)

    def live(self) -> tuple[bool, str]:
        """Whether the loop's heartbeat is fresher than `heartbeat_timeout` and every
        watched service runs, and why not.

        Before the first beat (model download, warm-up) the process counts as
        live: a start that hangs is systemd's TimeoutStartSec's business.
        """
        with self._lock:
            last, services = self._last_beat, list(self._services)
        for service in services:
            dead = service.failure()
            if dead is not None:
                return False, f"background service dead: {dead}"
        if last is None:
            return True, "starting: the loop has not run yet"
        age = self._clock() - last
        if age > self.heartbeat_timeout:
            return False, (
                f"loop heartbeat is {age:.1f}s old (limit {self.heartbeat_timeout:g}s): "
                "the worker loop is stuck"
            )
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Whether to take work: model warm, database reachable, not draining; and why not.

        Also sets the `argus_embedder_ready` gauge.
        """
        with self._lock:
            draining, warm = self._draining, self._model_warm
        if draining:
            result = False, "draining: shutting down"
        elif not warm:
            result = False, "model not warm yet"
        else:
            error = self._database_error()
            result = (False, f"database unreachable: {error}") if error else (True, "ok")
        metrics.READY.set(1 if result[0] else 0)
        return result

    def _database_error(self) -> str | None:
        """Run (or reuse a recent result of) the database check; None when it passed."""
        with self._check_lock:
            with self._lock:
                check, cached = self._db_check, self._db_result
            now = self._clock()
            if cached is not None and now - cached[0] < self._db_check_ttl:
                return cached[1]
            if check is None:
                return "no database check configured"
            error: str | None = None
            try:
                check()
            except Exception as exc:  # any failure of the probe means "not ready"
                error = _describe(exc)
                log.debug("readiness database check failed: %s", error)
            with self._lock:
                if self._db_check is check:
                    self._db_result = (self._clock(), error)
            return error


def render_metrics() -> bytes:
    """The daemon's registry (argus_embedder.metrics) in the Prometheus text format."""
    return prometheus_client.generate_latest(metrics.REGISTRY)


def _describe(exc: BaseException) -> str:
    """One short line about an exception, with any URL password masked."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return settings.redact_url(text[:_REASON_LIMIT]) or ""


# A connection that sends no whole request (or reads no answer) for this long is
# closed: without it a silent client held one of the server's threads for good.
# Scrapers send their request at once; Prometheus' own scrape timeout is 10 s.
IDLE_SECONDS = 10.0


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD /metrics, /livez, /readyz; 404 for anything else."""

    server: _Server
    server_version = "argus-embedder"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Every read and write of the connection; a stalled one raises TimeoutError,
        # which http.server answers by closing the connection.
        self.connection.settimeout(IDLE_SECONDS)

    def do_GET(self) -> None:
        self._respond(include_body=True)

    def do_HEAD(self) -> None:
        self._respond(include_body=False)

    def _respond(self, *, include_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        state = self.server.state
        if path == "/metrics":
            state.ready()  # refresh the ready gauge (cheap: the database check is cached)
            self._send(200, METRICS_CONTENT_TYPE, render_metrics(), include_body)
        elif path == "/livez":
            live, reason = state.live()
            self._send(200 if live else 503, _TEXT, reason.encode() + b"\n", include_body)
        elif path == "/readyz":
            ready, reason = state.ready()
            body: dict[str, Any] = {"ready": ready, "reason": reason, "details": state.details()}
            payload = json.dumps(body, sort_keys=True).encode() + b"\n"
            self._send(200 if ready else 503, "application/json", payload, include_body)
        else:
            self._send(404, _TEXT, b"not found: try /metrics, /livez or /readyz\n", include_body)

    def _send(self, code: int, content_type: str, body: bytes, include_body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if include_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line: scrapes every 15 s would flood the journal."""


_TEXT = "text/plain; charset=utf-8"


class HttpServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server on an IPv4 or an IPv6 address (`::`, `::1`), the family
    following the host's form; the daemon's health server and `serve` both."""

    daemon_threads = True  # a slow client never holds up shutdown
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler]
    ) -> None:
        # socketserver reads the family from the instance when it makes the socket.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)


class _Server(HttpServer):
    def __init__(self, address: tuple[str, int], state: HealthState) -> None:
        self.state = state
        super().__init__(address, _Handler)


@contextlib.contextmanager
def serve(port: int, state: HealthState, host: str = "0.0.0.0") -> Iterator[int | None]:  # noqa: S104 - scraped from other hosts
    """Serve /metrics, /livez and /readyz on `host:port` in a daemon thread while the block runs.

    Yields the bound port, or None without starting anything when `port` is 0
    (ARGUS_METRICS_PORT=0 disables the server). Raises ArgusError when the
    port cannot be bound.
    """
    if port == 0:
        yield None
        return
    try:
        server = _Server((host, port), state)
    except OSError as exc:
        raise errors.ArgusError(
            f"cannot listen on {host}:{port} for metrics ({exc.strerror or exc}); "
            "set ARGUS_METRICS_PORT to a free port, or 0 to disable"
        ) from exc
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="argus-http", daemon=True
    )
    thread.start()
    bound = int(server.server_address[1])
    log.info("serving /metrics, /livez and /readyz on %s:%d", host, bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
