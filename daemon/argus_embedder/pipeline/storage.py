"""Frame image storage: parse image URIs and fetch their bytes (S3 or local files)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import stat
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import botocore.httpsession
import tenacity
import urllib3
import urllib3.exceptions

from argus_embedder import errors
from argus_embedder.settings import Settings

log = logging.getLogger(__name__)

MAX_OBJECT_BYTES = 64 * 1024 * 1024  # a frame bigger than this is not a video frame
_PERMANENT_S3_CODES = {
    "NoSuchKey",
    "NoSuchBucket",
    "404",
    "NotFound",
    "AccessDenied",
    "403",
    "InvalidBucketName",
    "InvalidObjectState",
    "InvalidRange",
}
# 4xx codes that describe the request or the worker (clock, credentials, a slow
# connection), not the object: every frame would get them, and a fix elsewhere
# makes them go away, so they must never become a frame's permanent error row.
_TRANSIENT_S3_CODES = {
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "InternalError",
    "ServiceUnavailable",
    # The endpoint or region is wrong (botocore's get_object followed these; a presigned
    # URL cannot): a configuration fix, never the frame's fault.
    "PermanentRedirect",
    "TemporaryRedirect",
    "AuthorizationHeaderMalformed",
    "AuthorizationQueryParametersError",
}
# Kernel pseudo-files (/proc/self/environ, /sys/...) are never frames, whatever a row says.
_PSEUDO_FILE_SYSTEMS = ("/proc", "/sys")
# O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer (it is then
# refused as not a regular file); O_NOFOLLOW: the last component is not a symlink.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_URL_SECONDS = 900  # a presigned URL is used at once; this only bounds clock skew
_ERROR_BODY_BYTES = 64 * 1024
_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a frame's image lives: an S3 object or a local file."""

    bucket: str | None
    key: str | None
    path: Path | None


def parse_uri(uri: str, default_bucket: str | None) -> Location:
    """Parse `s3://bucket/key`, `file:///abs/path`, `/abs/path` or a bare key.

    Raises FrameError for anything else, with the reason.
    """
    if not uri or "\x00" in uri or len(uri) > 4096:
        raise errors.FrameError("bad image_uri: empty, too long or contains NUL")
    if uri.startswith("/"):
        return Location(None, None, Path(uri))
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "s3":
        key = parsed.path.lstrip("/")
        if not parsed.netloc or not key:
            raise errors.FrameError(f"bad image_uri {_short(uri)}: expected s3://bucket/key")
        return Location(parsed.netloc, urllib.parse.unquote(key), None)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise errors.FrameError(f"bad image_uri {_short(uri)}: expected file:///absolute/path")
        return Location(None, None, Path(urllib.parse.unquote(parsed.path)))
    if parsed.scheme:
        raise errors.FrameError(
            f"bad image_uri {_short(uri)}: unsupported scheme {parsed.scheme!r} "
            "(use s3://, file:// or a bare key)"
        )
    if default_bucket is None:
        raise errors.FrameError(
            f"image_uri {_short(uri)} is a bare key but ARGUS_S3_BUCKET is not set"
        )
    return Location(default_bucket, uri, None)


class OutsideRoots(errors.FrameError):
    """A `file://` or bare-path frame whose real path is under none of ARGUS_FILE_ROOTS."""


def _short(uri: str) -> str:
    return repr(uri if len(uri) <= 200 else uri[:200] + "…")


class Storage:
    """Fetches image bytes; transient S3 faults are retried, permanent ones are FrameErrors.

    botocore signs each request as a presigned URL (credentials, region, addressing style
    and endpoint stay botocore's); one shared urllib3 pool sends it. botocore's own
    `get_object` spent 2.2 ms of CPU per GET under the GIL (event hooks, response
    parsing, checksums), this path 0.8 ms (docs/performance.md).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_connections: int = 32,
        attempts: int = 5,
        max_wait: float = 5.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
    ) -> None:
        self._settings = settings
        self._options: dict[str, Any] = {
            "max_connections": max_connections,
            "attempts": attempts,
            "max_wait": max_wait,
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
        }
        self._bucket = settings.s3_bucket
        self._roots = _real_roots(settings.file_roots)
        self._signer: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            config=botocore.config.Config(signature_version="s3v4"),
        )
        self._http = _pool_manager(
            self._signer.meta.endpoint_url,
            max_connections,
            urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        )
        self._local = threading.local()
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(errors.TransientError),
            stop=tenacity.stop_after_attempt(attempts),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=max_wait),
            before_sleep=self._count_retry,
            reraise=True,
        )

    def __reduce__(self) -> tuple[Any, tuple[Settings]]:
        """Pickles as its settings: a decode process builds its own clients."""
        return functools.partial(Storage, **self._options), (self._settings,)

    def fetch(self, uri: str) -> bytes:
        """The bytes behind `uri`. Raises FrameError (never succeeds) or TransientError."""
        location = parse_uri(uri, self._bucket)
        if location.path is not None:
            return _read_file(location.path, self._roots)
        assert location.bucket is not None and location.key is not None
        bucket, key = location.bucket, location.key
        self._local.retries = 0
        return self._retrying(lambda: self._get_object(bucket, key))

    def last_retries(self) -> int:
        """How many times this thread's last `fetch` retried (a decode process reports
        them to the daemon, whose metrics are the ones scraped)."""
        return int(getattr(self._local, "retries", 0))

    def _get_object(self, bucket: str, key: str) -> bytes:
        name = f"s3://{bucket}/{key}"
        try:
            url = self._signer.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=_URL_SECONDS
            )
        except botocore.exceptions.ParamValidationError as error:
            raise errors.FrameError(f"{name}: {error}") from error
        except botocore.exceptions.NoCredentialsError as error:
            raise errors.TransientError(f"{name}: {error}") from error
        try:
            response = _get(self._http, url)
            try:
                if response.status == 200:
                    return _read_object(response, name)
                code = _error_code(response.read(_ERROR_BODY_BYTES))
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as error:  # resets, timeouts, short bodies
            raise errors.TransientError(f"{name}: {type(error).__name__}") from error
        except OSError as error:
            raise errors.TransientError(f"{name}: {type(error).__name__}") from error
        status = response.status
        if code not in _TRANSIENT_S3_CODES and (
            code in _PERMANENT_S3_CODES or status in (400, 403, 404)
        ):
            raise errors.FrameError(f"{name}: {code or status}")
        raise errors.TransientError(f"{name}: {code or status}")

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        from argus_embedder import metrics

        metrics.S3_RETRIES.inc()
        self._local.retries = self.last_retries() + 1
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        log.info("retrying S3 read (attempt %d): %s", state.attempt_number, error)


def _pool_manager(endpoint: str, size: int, timeout: urllib3.Timeout) -> urllib3.PoolManager:
    """One connection pool for every GET, through the proxy the environment names (as
    botocore would), verifying TLS with AWS_CA_BUNDLE or botocore's bundle."""
    options: dict[str, Any] = {
        "maxsize": size,
        "timeout": timeout,
        "ca_certs": os.environ.get("AWS_CA_BUNDLE") or botocore.httpsession.get_cert_path(True),
    }
    parts = urllib.parse.urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, **options)
    return urllib3.PoolManager(**options)


def _get(http: urllib3.PoolManager, url: str) -> urllib3.BaseHTTPResponse:
    """GET exactly the URL botocore signed. PoolManager.request would normalise its path
    (`a/../b` → `b`), reading another object than the key names."""
    parts = urllib.parse.urlsplit(url)
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    connection = http.connection_from_url(url)
    if isinstance(http, urllib3.ProxyManager) and parts.scheme == "http":
        target = url  # a plain-HTTP proxy takes the absolute form
    return connection.urlopen("GET", target, preload_content=False, redirect=False, retries=False)


def _read_object(response: urllib3.BaseHTTPResponse, name: str) -> bytes:
    """The body of a 200, refusing what is too big to be a frame before reading it all."""
    size = int(response.headers.get("Content-Length") or 0)
    if size > MAX_OBJECT_BYTES:
        raise errors.FrameError(
            f"object {name} is {size} bytes, over the {MAX_OBJECT_BYTES} byte limit"
        )
    data = response.read(MAX_OBJECT_BYTES + 1)  # a short body raises (Content-Length enforced)
    if len(data) > MAX_OBJECT_BYTES:
        raise errors.FrameError(f"object {name} is over the {MAX_OBJECT_BYTES} byte limit")
    return data


def _error_code(body: bytes) -> str:
    """S3's `<Code>` from an error response's XML ('' when there is none, as for HEAD)."""
    match = _CODE.search(body)
    return match.group(1).decode("ascii", "replace") if match else ""


def _real_roots(roots: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """ARGUS_FILE_ROOTS with symlinks resolved; ConfigError for one that is no directory
    (a typo would otherwise give every local frame a permanent error row)."""
    if roots is None:
        return None
    real = tuple(os.path.realpath(root) for root in roots)
    for given, resolved in zip(roots, real, strict=True):
        if not os.path.isdir(resolved):
            raise errors.ConfigError(f"ARGUS_FILE_ROOTS: {given} is not a directory")
    return real


def _root_of(real: str, roots: tuple[str, ...]) -> str | None:
    """The root `real` (a resolved path) lies under, if any."""
    for root in roots:
        if real == root or real.startswith(root.rstrip("/") + "/"):
            return root
    return None


def _read_file(path: Path, roots: tuple[str, ...] | None) -> bytes:
    """A local frame's bytes: a regular file, under one of `roots` when they are set.

    The path is resolved first (symlinks, `..`), so a symlink inside a root that points out
    of it is outside; the resolved path is then opened one component at a time without
    following links, so a symlink swapped in after the check cannot lead elsewhere.
    """
    real = os.path.realpath(path)
    root = None
    if roots is not None:
        root = _root_of(real, roots)
        if root is None:
            raise OutsideRoots(f"{path}: outside ARGUS_FILE_ROOTS")
    if _root_of(real, _PSEUDO_FILE_SYSTEMS) is not None:
        raise errors.FrameError(f"{path}: a kernel pseudo-file, not a frame")
    try:
        descriptor = _open_beneath(root or "/", real)
        try:
            return _read_regular(descriptor, path)
        finally:
            os.close(descriptor)
    except FileNotFoundError:
        raise errors.FrameError(f"{path}: no such file") from None
    except PermissionError:
        raise errors.FrameError(f"{path}: permission denied") from None
    except OSError as error:  # ELOOP, ENOTDIR: a symlink appeared after the check
        raise errors.FrameError(f"{path}: {error.strerror or error}") from None


def _open_beneath(root: str, real: str) -> int:
    """Open `real` (under `root`) walking down from `root`, following no symlink."""
    relative = os.path.relpath(real, root)
    parts = [] if relative == "." else relative.split(os.sep)
    if not parts:
        return os.open(root, _FILE_FLAGS)
    directory = os.open(root, _DIRECTORY_FLAGS)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=directory)
            os.close(directory)
            directory = inner
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)
    finally:
        os.close(directory)


def _read_regular(descriptor: int, path: Path) -> bytes:
    info = os.fstat(descriptor)
    if stat.S_ISDIR(info.st_mode):
        raise errors.FrameError(f"{path}: is a directory")
    if not stat.S_ISREG(info.st_mode):  # a FIFO, a socket, a device
        raise errors.FrameError(f"{path}: not a regular file")
    if info.st_size > MAX_OBJECT_BYTES:
        raise errors.FrameError(f"{path}: {info.st_size} bytes, over the {MAX_OBJECT_BYTES} limit")
    os.set_blocking(descriptor, True)
    with os.fdopen(descriptor, "rb", closefd=False) as file:
        data = file.read(MAX_OBJECT_BYTES + 1)  # a file that grew since fstat
    if len(data) > MAX_OBJECT_BYTES:
        raise errors.FrameError(f"{path}: over the {MAX_OBJECT_BYTES} byte limit")
    return data
