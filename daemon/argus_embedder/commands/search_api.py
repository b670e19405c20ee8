"""`serve`'s HTTP side: the search page (/ and /static/), /search, /frames/ID, /livez,
/readyz and /metrics.

Every answer is JSON (the page, images and /metrics aside), errors included: a bad
request is a 400 that says what was wrong, never a 500 or a traceback. Nothing from a
request reaches storage or the file system: /frames/ID looks the id up in argus.frames
and fetches that row's URI, and the page's files are a fixed table. Nor does a row reach
further than an image: storage reads local files only under ARGUS_FILE_ROOTS when set
and only regular files, and /frames/ID sends only bytes Pillow identifies as an image of
a format the daemon decodes.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import importlib.resources
import io
import json
import logging
import re
import socket
import sys
import threading
import time
import typing
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import psycopg_pool
from PIL import Image

from argus_embedder import errors
from argus_embedder.commands import search, serve_metrics, thumbnail
from argus_embedder.gateways import frames
from argus_embedder.pipeline import images, storage
from argus_embedder.runtime import health

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 10
_PARAMETERS = frozenset({"q", "limit", "project", "video", "by"})
_FRAME_PARAMETERS = frozenset({"width"})
# bigint's range has 19 digits; 18 keeps every accepted id inside it without a cast
_FRAME_ID = re.compile(r"[0-9]{1,18}")
_MAX_FIELDS = 20  # query-string fields parsed before the request is refused
# http.server refuses request lines over 65,536 bytes, which a documented 10,000-character
# query exceeds in most scripts once percent-encoded ('€' is 9 bytes, '😀' 12). Room for q at
# its limit in any script (at most 12 bytes a character) and the other parameters:
MAX_REQUEST_LINE = 128 * 1024
_MAX_ENCODED_TEXT = 12 * search.MAX_TEXT
_DISCARD_BYTES = 1024 * 1024  # what is read past an over-long line so the 414 arrives
# Connections with a thread each: a browser opens ~6, a proxy keeps a pool; beyond this a
# new connection gets a 503 instead of another thread.
MAX_CONNECTIONS = 64
# A connection that neither sends nor reads for this long is closed (idle keep-alive,
# a stalled upload, a client that stopped reading a frame).
IDLE_SECONDS = 30.0
_HTML = "text/html; charset=utf-8"
# Content-Type by Pillow's format name, for every format the daemon decodes (images.FORMATS).
_IMAGE_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # a multi-picture JPEG: browsers show its first picture
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "AVIF": "image/avif",
}
# The page's files by URL path: (file in the search_page folder, content type).
PAGE_FILES = {
    "/": ("index.html", _HTML),
    "/static/search.css": ("search.css", "text/css; charset=utf-8"),
    "/static/search.js": ("search.js", "text/javascript; charset=utf-8"),
}
# The page loads only its own files and talks only to this server: an injected string
# could neither run a script nor send anything elsewhere.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class _HttpError(Exception):
    """A request that ends with `code` and `{"error": message}`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# What a client that hangs up or stops reading raises in the middle of an answer.
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class FrameImage(typing.NamedTuple):
    """What /frames/ID sends: the bytes, their Content-Type, and whether they were scaled."""

    data: bytes
    content_type: str
    size: str  # serve_metrics.FRAME_SIZES


class SearchService:
    """What the handlers share across threads: the warm encoder, the read pool, storage.

    `encode` turns one text into the configured model's unit vector (thread-safe: a
    torch forward under inference mode); `fetch` is pipeline.storage.Storage.fetch.
    """

    def __init__(
        self,
        *,
        model: str,
        encode: Callable[[str], npt.NDArray[np.float32]],
        pool: psycopg_pool.ConnectionPool[Any],
        fetch: Callable[[str], bytes],
        state: health.HealthState,
    ) -> None:
        self.model = model
        self.encode = encode
        self.pool = pool
        self.fetch = fetch
        self.state = state

    def search(self, query_string: str) -> list[dict[str, Any]]:
        """/search's body for a raw query string; raises _HttpError(400) on bad input."""
        started = time.perf_counter()
        params = _parameters(query_string)
        text = params.get("q", "").strip()
        if not text:
            raise _HttpError(400, "q (the search text) is required")
        limit = _limit(params.get("limit"))
        by = params.get("by", "frame")
        if by not in search.BY:
            raise _HttpError(400, f"by must be one of {', '.join(search.BY)}")
        try:
            search.check_request(text, limit)
        except errors.UserInputError as error:
            raise _HttpError(400, str(error)) from error
        project, video = params.get("project") or None, params.get("video") or None
        if "\x00" in (project or "") + (video or ""):
            # PostgreSQL text cannot hold NUL: psycopg would fail with a DataError (a 500).
            raise _HttpError(400, "project and video cannot contain NUL characters")
        with self.pool.connection() as connection:
            # Before encoding: a typo in the model or the project costs no forward pass.
            try:
                search.check_searchable(connection, self.model)
            except errors.UserInputError as error:
                raise _HttpError(400, str(error)) from error
            if project is not None and not frames.project_exists(connection, project):
                raise _HttpError(400, "unknown project")
            encode_started = time.perf_counter()
            vector = self.encode(text)
            serve_metrics.SEARCH_ENCODE_SECONDS.observe(time.perf_counter() - encode_started)
            try:
                found = search.found(
                    connection,
                    self.model,
                    vector,
                    by=by,
                    limit=limit,
                    video_id=video,
                    project_id=project,
                )
            except errors.UserInputError as error:
                raise _HttpError(400, str(error)) from error
        serve_metrics.SEARCH_SECONDS.observe(time.perf_counter() - started)
        return search.as_json(found)

    def frame(self, raw_id: str, query_string: str = "") -> FrameImage:
        """The image of frame `raw_id` (the path's last segment, untrusted) and its
        Content-Type, scaled down to `?width=N` pixels when asked."""
        if not _FRAME_ID.fullmatch(raw_id):
            raise _HttpError(400, "a frame id is a positive integer")
        params = _parameters(query_string, _FRAME_PARAMETERS)
        width = None if "width" not in params else _width(params["width"])
        with self.pool.connection() as connection:
            uri = frames.image_uri(connection, int(raw_id))
        if uri is None:
            raise _HttpError(404, "no such frame")
        try:
            data = self.fetch(uri)
        except storage.OutsideRoots as error:
            log.info("frame %s: %s", raw_id, error)
            raise _HttpError(404, "the frame's file is outside ARGUS_FILE_ROOTS") from error
        except errors.FrameError as error:
            # The URI is ours, but its bucket and key are nobody's business outside.
            log.info("frame %s: %s", raw_id, error)
            raise _HttpError(404, "the frame's image is missing from storage") from error
        except errors.TransientError as error:
            log.warning("frame %s: %s", raw_id, error)
            raise _HttpError(503, "storage unavailable, try again") from error
        kind = content_type(data)
        if kind is None:
            # Whatever the row names, only an image leaves: never a secret, a key, a log.
            log.info("frame %s: its file is not an image of a format the daemon decodes", raw_id)
            raise _HttpError(404, "the frame's file is not an image")
        if width is None:
            return FrameImage(data, kind, "original")
        try:
            scaled = thumbnail.scale(data, width)
        except errors.FrameError as error:
            log.info("frame %s: cannot scale: %s", raw_id, error)
            raise _HttpError(404, "the frame's image cannot be decoded") from error
        if scaled is data:  # no wider than asked: the frame itself
            return FrameImage(data, kind, "original")
        return FrameImage(scaled, "image/jpeg", "scaled")


def content_type(data: bytes) -> str | None:
    """The image type of `data` from its header (the URI's extension may lie or be absent),
    None for anything that is not an image of a format the daemon decodes."""
    try:
        with Image.open(io.BytesIO(data), formats=images.FORMATS) as image:
            return _IMAGE_TYPES.get(image.format or "")
    except Exception:  # Pillow refuses the bytes: not an image, whatever the reason
        return None


def _parameters(query_string: str, known: frozenset[str] = _PARAMETERS) -> dict[str, str]:
    """The query string as one value per known name; 400 for unknown or repeated names."""
    try:
        pairs = urllib.parse.parse_qsl(
            query_string, keep_blank_values=True, max_num_fields=_MAX_FIELDS, errors="strict"
        )
    except (ValueError, UnicodeDecodeError) as error:
        raise _HttpError(400, "malformed query string") from error
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in known:
            raise _HttpError(400, f"unknown parameter {name[:40]!r}")
        if name in params:
            raise _HttpError(400, f"{name} given more than once")
        params[name] = value
    return params


def _width(raw: str) -> int:
    # Digits only, as for limit; a bounded width is a bounded cost.
    if raw.isascii() and raw.isdigit() and len(raw) <= 4:
        width = int(raw)
        if thumbnail.MIN_WIDTH <= width <= thumbnail.MAX_WIDTH:
            return width
    raise _HttpError(
        400, f"width must be an integer between {thumbnail.MIN_WIDTH} and {thumbnail.MAX_WIDTH}"
    )


@functools.cache
def page_file(name: str) -> bytes:
    """One of the search page's files, from the package (read once)."""
    folder = importlib.resources.files("argus_embedder.commands").joinpath("search_page")
    return folder.joinpath(name).read_bytes()


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    # Digits only: int() would also take "+5", " 5" and "5_0".
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise _HttpError(400, f"limit must be an integer between 1 and {search.MAX_LIMIT}")
    return int(raw)


@dataclasses.dataclass(frozen=True)
class _Answer:
    code: int
    kind: str  # Content-Type
    body: bytes
    cache: str = "no-store"  # Cache-Control


class _Handler(http.server.BaseHTTPRequestHandler):
    server: SearchServer
    server_version = "argus-embedder"
    sys_version = ""
    protocol_version = "HTTP/1.1"  # keep-alive: a page of thumbnails is many requests

    def setup(self) -> None:
        super().setup()
        # Every read and write of this connection: a stalled one raises TimeoutError,
        # which closes the connection (http.server's handling, or _send's).
        self.connection.settimeout(self.server.idle_seconds)

    def handle_one_request(self) -> None:
        """http.server's, with MAX_REQUEST_LINE instead of its 65,536 bytes and a JSON 414
        beyond it."""
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.close_connection = True
                self._discard_request_head()
                self._error(
                    "other",
                    414,
                    f"the request line is longer than {MAX_REQUEST_LINE} bytes: q may hold "
                    f"at most {search.MAX_TEXT} characters ({_MAX_ENCODED_TEXT} bytes "
                    "percent-encoded)",
                )
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return  # parse_request sent the error
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(501)
                return
            method()
            self.wfile.flush()
        except TimeoutError as error:
            self.log_error("Request timed out: %r", error)
            self.close_connection = True

    def _discard_request_head(self) -> None:
        """Read the rest of an over-long request line and its headers (bounded): closing
        with them unread would reset the connection before the client reads the 414."""
        budget = _DISCARD_BYTES
        line = self.raw_requestline
        while budget > 0 and not line.endswith(b"\n"):
            line = self.rfile.readline(min(65536, budget))
            if not line:
                return
            budget -= len(line)
        while budget > 0:
            line = self.rfile.readline(min(65536, budget))
            if line in (b"", b"\n", b"\r\n"):
                return
            budget -= len(line)

    def do_GET(self) -> None:
        endpoint = "other"
        try:
            split = urllib.parse.urlsplit(self.path)
            path = split.path
            if path == "/search":
                endpoint = "search"
                body = json.dumps(self.server.service.search(split.query)).encode()
                self._send(endpoint, _Answer(200, "application/json", body))
            elif path.startswith("/frames/"):
                endpoint = "frames"
                image = self.server.service.frame(path.removeprefix("/frames/"), split.query)
                # A frame's bytes never change for its id.
                cache = "private, max-age=86400"
                answer = _Answer(200, image.content_type, image.data, cache=cache)
                if self._send(endpoint, answer):
                    serve_metrics.FRAMES_SERVED.labels(image.size).inc()
            elif path in PAGE_FILES:
                name, kind = PAGE_FILES[path]
                # Revalidated, not stored: a new version's page never meets an old script.
                self._send(endpoint, _Answer(200, kind, page_file(name), cache="no-cache"))
            else:
                self._send(endpoint, self._health(path))
        except _HttpError as error:
            self._error(endpoint, error.code, str(error))
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
            log.warning("%s: database unavailable: %s", endpoint, errors.first_line(error))
            self._error(endpoint, 503, "database unavailable, try again")
        except Exception:
            # The log keeps the traceback for the operator; the client gets one line.
            log.exception("%s: unexpected error", endpoint)
            self._error(endpoint, 500, "internal error")

    def _health(self, path: str) -> _Answer:
        """/livez, /readyz and /metrics, as the daemon's."""
        state = self.server.service.state
        if path == "/livez":
            # Answering at all is the proof: serve has no loop that could hang.
            return _Answer(200, "text/plain; charset=utf-8", b"ok\n")
        if path == "/readyz":
            # The daemon's body: {"ready", "reason", "details"}.
            ready, reason = state.ready()
            verdict = {"ready": ready, "reason": reason, "details": state.details()}
            payload = json.dumps(verdict, sort_keys=True).encode() + b"\n"
            return _Answer(200 if ready else 503, "application/json", payload)
        if path == "/metrics":
            state.ready()  # refresh the ready gauge (cached check)
            return _Answer(200, serve_metrics.CONTENT_TYPE, serve_metrics.render())
        raise _HttpError(404, "not found: try / (the search page), /search?q=TEXT or /frames/ID")

    def _not_allowed(self) -> None:
        # A request body stays unread: close, or keep-alive would parse it as a request.
        self.close_connection = True
        self._error("other", 405, "only GET is allowed", allow="GET")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (malformed request line, unknown method) as JSON too."""
        if code == 501:  # an unknown method: the same answer as for POST
            code, message = 405, "only GET is allowed"
        self.close_connection = True
        self._error("other", code, message or "bad request")

    def _error(self, endpoint: str, code: int, message: str, *, allow: str | None = None) -> None:
        body = json.dumps({"error": message}).encode() + b"\n"
        self._send(endpoint, _Answer(code, "application/json", body), allow=allow)

    def _send(self, endpoint: str, answer: _Answer, *, allow: str | None = None) -> bool:
        """Send `answer`; False when the client hung up (or stopped reading) before it had
        all of it: no error of ours, so no 500 and no traceback, and the connection closes."""
        code = answer.code
        serve_metrics.count_request(endpoint, code)
        self.send_response(code)
        self.send_header("Content-Type", answer.kind)
        self.send_header("Content-Length", str(len(answer.body)))
        # Search results change with every ingest: "no-store" unless the answer says.
        self.send_header("Cache-Control", answer.cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        if answer.kind == _HTML:
            self.send_header("Content-Security-Policy", _PAGE_POLICY)
            self.send_header("Referrer-Policy", "no-referrer")
        if allow is not None:
            self.send_header("Allow", allow)
        try:
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer.body)
        except CLIENT_GONE as error:
            self.close_connection = True
            log.debug("%s: the client left mid-answer (%s)", endpoint, type(error).__name__)
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:
        """Per-request lines at DEBUG: the counters in /metrics are the record."""
        log.debug("%s %s", self.address_string(), format % args)


class SearchServer(health.HttpServer):
    """`serve`'s server, on an IPv4 or IPv6 address.

    Each connection has a thread, so connections are bounded: beyond `max_connections`
    a new one gets a 503 and is closed at once, and a connection that sends nothing
    (an idle keep-alive, a half-sent request) or reads nothing for `idle_seconds` is
    closed, so idle clients cannot hold every thread.
    """

    def __init__(
        self,
        address: tuple[str, int],
        service: SearchService,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.service = service
        self.max_connections = max_connections
        self.idle_seconds = idle_seconds
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open = 0
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def connections(self) -> int:
        """How many connections have a thread now."""
        with self._open_lock:
            return self._open

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection's unexpected error: to the log, not stderr; a client that left
        while its request was being read is no error at all."""
        if isinstance(sys.exc_info()[1], CLIENT_GONE):
            log.debug("a client left while its request was read")
            return
        log.exception("unexpected error on a connection")

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's thread, or refuse it when every slot is taken."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        with self._open_lock:
            self._open += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._open_lock:
            self._open -= 1
        self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        # In the accepting thread: a few hundred bytes always fit the new socket's send
        # buffer, and the timeout bounds the rare case where they do not.
        message = f"too many connections (serve takes {self.max_connections}); try again"
        body = json.dumps({"error": message}).encode() + b"\n"
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        serve_metrics.count_request("other", 503)
        log.debug("refused a connection: %d open", self.max_connections)
        try:
            request.settimeout(1.0)
            request.sendall(head.encode() + body)
            # A request already here, left unread, would make the close a reset that
            # can overtake the 503 on its way; what comes later meets a closed socket.
            request.setblocking(False)
            request.recv(65536)
        except OSError:
            pass  # nothing to read yet, or the client is gone already
        self.shutdown_request(request)
