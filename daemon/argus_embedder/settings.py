"""Configuration: one frozen dataclass built once from the environment and flags."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Mapping
from typing import Any

from argus_embedder import errors

DEFAULT_MODEL = "google/siglip2-base-patch16-224"
DEVICES = ("auto", "cpu", "cuda")
DECODES = ("auto", "cpu", "gpu")


# Which commands read a variable, so that each command's --help (and its flags) lists
# only those: a Variable names its readers in `commands`; None means every command.
DATABASE_COMMANDS = frozenset(
    {"migrate", "run", "enqueue", "ingest", "status", "search", "serve", "project"}
    | {"cancel", "retry", "backfill", "prune", "bench"}
)  # `demo` always uses the embedded server
MODEL_COMMANDS = frozenset(
    {"migrate", "run", "status", "search", "serve", "project", "backfill", "prune", "demo"}
    | {"bench"}
)
DEVICE_COMMANDS = frozenset({"run", "search", "serve", "demo", "bench"})
STORAGE_COMMANDS = frozenset({"run", "serve"})  # they read frame images
DAEMON_COMMANDS = frozenset({"run"})


@dataclasses.dataclass(frozen=True)
class Variable:
    """One ARGUS_* variable: its settings field, CLI flag, default (as text) and the
    commands that read it (None: every command)."""

    env: str
    field: str
    default: str | None
    help: str
    commands: frozenset[str] | None = None

    def read_by(self, command: str) -> bool:
        return self.commands is None or command in self.commands

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "ARGUS_DATABASE_URL",
        "database_url",
        None,
        "PostgreSQL URL; unset: an embedded PostgreSQL under the user data dir",
        DATABASE_COMMANDS,
    ),
    Variable("ARGUS_MODEL", "model", DEFAULT_MODEL, "hub id or local directory", MODEL_COMMANDS),
    Variable("ARGUS_DEVICE", "device", "auto", "auto | cpu | cuda | cuda:N", DEVICE_COMMANDS),
    Variable(
        "ARGUS_BATCH_SIZE",
        "batch_size",
        None,
        "frames per forward pass; unset: auto",
        frozenset({"run", "search", "demo", "bench"}),
    ),
    Variable(
        "ARGUS_S3_BUCKET", "s3_bucket", None, "bucket for bare-key image URIs", STORAGE_COMMANDS
    ),
    Variable(
        "ARGUS_S3_ENDPOINT_URL",
        "s3_endpoint_url",
        None,
        "S3-compatible endpoint",
        STORAGE_COMMANDS,
    ),
    Variable(
        "ARGUS_METRICS_PORT", "metrics_port", "9478", "HTTP port; 0 disables", DAEMON_COMMANDS
    ),
    Variable(
        "ARGUS_METRICS_HOST",
        "metrics_host",
        "0.0.0.0",  # noqa: S104 - scraped by Prometheus from another host, as exporters are
        "address the daemon's /metrics, /livez, /readyz listen on; 127.0.0.1: this host only",
        DAEMON_COMMANDS,
    ),
    Variable("ARGUS_LEASE_SECONDS", "lease_seconds", "60", "job lease length", DAEMON_COMMANDS),
    Variable("ARGUS_POLL_INTERVAL", "poll_interval", "5", "seconds between polls", DAEMON_COMMANDS),
    Variable("ARGUS_WORKER_ID", "worker_id", None, "default hostname:pid", DAEMON_COMMANDS),
    Variable(
        "ARGUS_RECONCILE_INTERVAL",
        "reconcile_interval",
        "300",
        "seconds; 0 disables",
        DAEMON_COMMANDS,
    ),
    Variable(
        "ARGUS_DECODE_PROCESSES",
        "decode_processes",
        None,
        "fetch+decode processes; 0: threads in the daemon; unset: one per core, at most 16",
        frozenset({"run", "bench"}),
    ),
    Variable(
        "ARGUS_DECODE",
        "decode",
        "auto",
        "auto | cpu | gpu: JPEG decode on the GPU (CUDA device and torchvision) or CPU",
        frozenset({"run", "demo", "bench"}),
    ),
    Variable(
        "ARGUS_READ_DATABASE_URL",
        "read_database_url",
        None,
        "PostgreSQL URL that search, serve and status read from (a streaming replica); "
        "unset: they read from ARGUS_DATABASE_URL",
        frozenset({"search", "serve", "status"}),
    ),
    Variable(
        "ARGUS_FILE_ROOTS",
        "file_roots",
        None,
        "':'-separated directories, the only places file:// and bare-path frames are read "
        "from; unset: any regular file",
        STORAGE_COMMANDS,
    ),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated configuration, passed down to every component."""

    database_url: str | None = None
    model: str = DEFAULT_MODEL
    device: str = "auto"
    batch_size: int | None = None
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    metrics_port: int = 9478
    metrics_host: str = "0.0.0.0"  # noqa: S104 - see ARGUS_METRICS_HOST
    lease_seconds: float = 60.0
    poll_interval: float = 5.0
    worker_id: str = dataclasses.field(default_factory=lambda: default_worker_id())
    reconcile_interval: float = 300.0
    decode_processes: int | None = None  # None: automatic (preparing.processes)
    read_database_url: str | None = None  # None: reads go to database_url
    decode: str = "auto"  # auto | cpu | gpu (pipeline.decoding chooses at start-up)
    file_roots: tuple[str, ...] | None = None  # None: local frames may be read from anywhere

    def __repr__(self) -> str:  # never print the database password
        fields = dataclasses.asdict(self)
        fields["database_url"] = redact_url(self.database_url)
        fields["read_database_url"] = redact_url(self.read_database_url)
        inner = ", ".join(f"{key}={value!r}" for key, value in fields.items())
        return f"Settings({inner})"

    @property
    def heartbeat_interval(self) -> float:
        return self.lease_seconds / 3


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


_USERINFO_PASSWORD = re.compile(r"(://[^:/@]*:).*@")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)(?:'(?:[^'\\]|\\.|'')*'?|[^\s&]+)", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """Hide the password of a libpq URL or key=value string.

    Over-masking is fine, a leak is not: the user-info part runs to the last `@` (a
    password with a raw `@` in it still ends there), a quoted key=value password may hold
    spaces and escaped quotes, and keywords are matched in any case.
    """
    if url is None:
        return None
    url = _USERINFO_PASSWORD.sub(r"\1***@", url)
    return _KEYWORD_PASSWORD.sub(r"\1***", url)


def load(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from `env` (default os.environ) then non-None `overrides` (CLI flags).

    Raises ConfigError naming the variable on any bad value.
    """
    env = os.environ if env is None else env
    raw: dict[str, str | None] = {}
    for variable in VARIABLES:
        value = overrides.get(variable.field)
        if value is None:
            value = env.get(variable.env)
        if value is not None:
            value = str(value).strip()
            if value == "":
                value = None
        raw[variable.field] = value if value is not None else variable.default
    return _validate(raw)


def _validate(raw: Mapping[str, str | None]) -> Settings:
    device = raw["device"] or "auto"
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise errors.ConfigError(f"ARGUS_DEVICE={device!r} is not one of auto, cpu, cuda, cuda:N")
    model = raw["model"] or ""
    if not model:
        raise errors.ConfigError("ARGUS_MODEL is empty")
    endpoint = raw["s3_endpoint_url"]
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise errors.ConfigError(
            f"ARGUS_S3_ENDPOINT_URL={endpoint!r} must start with http:// or https://"
        )
    decode = raw["decode"] or "auto"
    if decode not in DECODES:
        raise errors.ConfigError(f"ARGUS_DECODE={decode!r} is not one of auto, cpu, gpu")
    url = _database_url(raw, "ARGUS_DATABASE_URL", "database_url")
    return Settings(
        database_url=url,
        model=model,
        device=device,
        batch_size=_integer(raw, "ARGUS_BATCH_SIZE", "batch_size", minimum=1, optional=True),
        s3_bucket=raw["s3_bucket"],
        s3_endpoint_url=endpoint,
        metrics_port=_integer(raw, "ARGUS_METRICS_PORT", "metrics_port", minimum=0, maximum=65535)
        or 0,
        metrics_host=raw["metrics_host"] or "0.0.0.0",  # noqa: S104
        lease_seconds=_number(raw, "ARGUS_LEASE_SECONDS", "lease_seconds", minimum=1),
        poll_interval=_number(raw, "ARGUS_POLL_INTERVAL", "poll_interval", minimum=0.01),
        worker_id=raw["worker_id"] or default_worker_id(),
        reconcile_interval=_number(
            raw, "ARGUS_RECONCILE_INTERVAL", "reconcile_interval", minimum=0
        ),
        decode_processes=_integer(
            raw, "ARGUS_DECODE_PROCESSES", "decode_processes", minimum=0, maximum=256, optional=True
        ),
        read_database_url=_database_url(raw, "ARGUS_READ_DATABASE_URL", "read_database_url"),
        decode=decode,
        file_roots=_file_roots(raw["file_roots"]),
    )


def _file_roots(text: str | None) -> tuple[str, ...] | None:
    """ARGUS_FILE_ROOTS as absolute directory names (whether they exist is checked where
    frames are read: `status` on another host need not have them)."""
    if text is None:
        return None
    roots = tuple(text.split(":"))
    for root in roots:
        if not root.startswith("/"):
            raise errors.ConfigError(
                f"ARGUS_FILE_ROOTS={text!r}: every entry must be an absolute directory, "
                f"not {root!r}"
            )
    return roots


def _database_url(raw: Mapping[str, str | None], env: str, field: str) -> str | None:
    url = raw[field]
    if url is not None and not (url.startswith(("postgresql://", "postgres://")) or "=" in url):
        raise errors.ConfigError(f"{env}={redact_url(url)!r} is not a postgresql:// URL")
    return url


def _integer(
    raw: Mapping[str, str | None],
    env: str,
    field: str,
    *,
    minimum: int,
    maximum: int | None = None,
    optional: bool = False,
) -> int | None:
    text = raw[field]
    if text is None:
        if optional:
            return None
        raise errors.ConfigError(f"{env} is required")
    try:
        value = int(text)
    except ValueError:
        raise errors.ConfigError(f"{env}={text!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise errors.ConfigError(f"{env}={value} must be at least {minimum}{upper}")
    return value


def _number(raw: Mapping[str, str | None], env: str, field: str, *, minimum: float) -> float:
    text = raw[field]
    assert text is not None  # every number has a default
    try:
        value = float(text)
    except ValueError:
        raise errors.ConfigError(f"{env}={text!r} is not a number") from None
    if not value >= minimum:  # also rejects NaN
        raise errors.ConfigError(f"{env}={value} must be at least {minimum}")
    return value
