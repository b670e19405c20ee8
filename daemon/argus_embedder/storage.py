"""Frame image storage: parse image URIs and fetch their bytes (S3 or local files)."""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import tenacity
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
}
_TRANSIENT_BOTO_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.HTTPClientError,
    # botocore reads an error response's body (a 404's XML) outside its own wrappers,
    # so a reset or a stall there surfaces as urllib3's ProtocolError/ReadTimeoutError.
    urllib3.exceptions.HTTPError,
)


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


def _short(uri: str) -> str:
    return repr(uri if len(uri) <= 200 else uri[:200] + "…")


class Storage:
    """Fetches image bytes; transient S3 faults are retried, permanent ones are FrameErrors."""

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
        self._bucket = settings.s3_bucket
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            config=botocore.config.Config(
                max_pool_connections=max_connections,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                # tenacity below owns retries, so faults are counted and logged once.
                retries={"total_max_attempts": 1, "mode": "standard"},
            ),
        )
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(errors.TransientError),
            stop=tenacity.stop_after_attempt(attempts),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=max_wait),
            before_sleep=self._count_retry,
            reraise=True,
        )

    def fetch(self, uri: str) -> bytes:
        """The bytes behind `uri`. Raises FrameError (never succeeds) or TransientError."""
        location = parse_uri(uri, self._bucket)
        if location.path is not None:
            return _read_file(location.path)
        assert location.bucket is not None and location.key is not None
        bucket, key = location.bucket, location.key
        return self._retrying(lambda: self._get_object(bucket, key))

    def _get_object(self, bucket: str, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=bucket, Key=key)
            size = int(response.get("ContentLength") or 0)
            if size > MAX_OBJECT_BYTES:
                response["Body"].close()
                raise errors.FrameError(
                    f"object s3://{bucket}/{key} is {size} bytes, over the "
                    f"{MAX_OBJECT_BYTES} byte limit"
                )
            data: bytes = response["Body"].read()
            return data
        except botocore.exceptions.ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code not in _TRANSIENT_S3_CODES and (
                code in _PERMANENT_S3_CODES or status in (400, 403, 404)
            ):
                raise errors.FrameError(f"s3://{bucket}/{key}: {code or status}") from error
            raise errors.TransientError(f"s3://{bucket}/{key}: {code or status}") from error
        except botocore.exceptions.ParamValidationError as error:
            raise errors.FrameError(f"s3://{bucket}/{key}: {error}") from error
        except _TRANSIENT_BOTO_ERRORS as error:
            raise errors.TransientError(f"s3://{bucket}/{key}: {type(error).__name__}") from error
        except OSError as error:  # urllib3 protocol errors surface as OSError subclasses
            raise errors.TransientError(f"s3://{bucket}/{key}: {type(error).__name__}") from error

    @staticmethod
    def _count_retry(state: tenacity.RetryCallState) -> None:
        from argus_embedder import metrics

        metrics.S3_RETRIES.inc()
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        log.info("retrying S3 read (attempt %d): %s", state.attempt_number, error)


def _read_file(path: Path) -> bytes:
    try:
        size = os.stat(path).st_size
        if size > MAX_OBJECT_BYTES:
            raise errors.FrameError(f"{path}: {size} bytes, over the {MAX_OBJECT_BYTES} limit")
        return path.read_bytes()
    except FileNotFoundError:
        raise errors.FrameError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise errors.FrameError(f"{path}: is a directory") from None
    except PermissionError:
        raise errors.FrameError(f"{path}: permission denied") from None
    except (OSError, ValueError) as error:
        raise errors.FrameError(f"{path}: {error}") from None
