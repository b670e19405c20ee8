"""A fault-injecting HTTP proxy for the S3 endpoint (loopback only).

It sits between the code under test and moto: every request is forwarded unchanged unless
a scripted fault matches it. Faults are what real object stores and the networks in front
of them do:

- ``error``: an S3 error response (default 503 SlowDown) instead of the object;
- ``slow``: the response starts only after ``delay`` seconds (past the client's read timeout);
- ``stall``: the status line and headers arrive, the body only after ``delay`` seconds;
- ``reset``: the connection is reset (RST) before any byte of the response;
- ``truncate``: the full Content-Length is announced, half the body sent, then RST.

Faults are rules with a remaining count (``times``), an optional key filter and an
optional probability, consumed in order, so a test scripts "the next 3 GETs of this key
get a 503" exactly, or "a fifth of all requests, for the next 200" at random.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import random
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from typing import Literal

Mode = Literal["error", "slow", "stall", "reset", "truncate"]
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


@dataclasses.dataclass
class Fault:
    """One scripted fault: applied to the next `times` requests whose path contains `match`
    (each with `probability`; a request the dice spare goes on to the next rule)."""

    mode: Mode
    times: int = 1
    match: str | None = None
    probability: float = 1.0
    delay: float = 0.0
    status: int = 503
    code: str = "SlowDown"


class FaultProxy:
    """A threaded HTTP proxy to `upstream` (``http://host:port``) that injects `Fault`s."""

    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.applied: Counter[str] = Counter()  # mode -> faults applied; "forwarded" for the rest
        self.requests = 0
        self._rules: list[Fault] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fault-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._rules.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def pending(self) -> int:
        """Faults scripted but not yet applied."""
        with self._lock:
            return sum(rule.times for rule in self._rules)

    def _take(self, path: str) -> Fault | None:
        with self._lock:
            self.requests += 1
            for rule in self._rules:
                if rule.match is not None and rule.match not in path:
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                if rule.times > 0:
                    rule.times -= 1
                    self.applied[rule.mode] += 1
                    if rule.times == 0:
                        self._rules.remove(rule)
                    return rule
            self.applied["forwarded"] += 1
            return None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests report what the proxy did from its counters."""

    def finish(self) -> None:
        # A reset connection cannot be flushed; that is the point of the fault.
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fault = self.server.proxy._take(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if fault is not None and fault.mode == "reset":
            self._reset()
            return
        if fault is not None and fault.mode == "error":
            self._send_error(fault)
            return
        if fault is not None and fault.mode == "slow":
            time.sleep(fault.delay)
        status, reason, headers, payload = self._forward(body)
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_HEADERS:
                self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is not None and fault.mode == "stall":
            self.wfile.flush()
            time.sleep(fault.delay)
        if fault is not None and fault.mode == "truncate":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self._reset()
            return
        with contextlib.suppress(OSError):  # the client may have timed out and left
            self.wfile.write(payload)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=30)
        try:
            headers = {
                name: value
                for name, value in self.headers.items()
                if name.lower() not in _HOP_HEADERS
            }
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            return response.status, response.reason, response.getheaders(), payload
        finally:
            connection.close()

    def _send_error(self, fault: Fault) -> None:
        payload = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{fault.code}</Code><Message>injected by the fault proxy</Message>"
            "<RequestId>fault</RequestId></Error>"
        ).encode()
        self.send_response(fault.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Close with SO_LINGER 0, so the peer sees a TCP RST, not an orderly FIN."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        self.close_connection = True


@contextlib.contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """A started FaultProxy in front of `upstream`, stopped on exit."""
    with FaultProxy(upstream) as proxy:
        yield proxy


class UnixForwarder:
    """A TCP port on loopback that forwards each connection to a Unix socket (the
    embedded PostgreSQL listens only on one): lets a test make a database appear on a
    port later, or vanish from it, without touching the server."""

    def __init__(self, port: int, unix_path: str) -> None:
        self.port = port
        self.unix_path = unix_path
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self._open: list[socket.socket] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="unix-forwarder", daemon=True)

    def __enter__(self) -> UnixForwarder:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in list(self._open):
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(self.unix_path)
            except OSError:
                client.close()
                continue
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
