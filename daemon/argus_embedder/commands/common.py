"""What several commands share: a migrated database's connection, safe quoting."""

from __future__ import annotations

from typing import Any

import psycopg

from argus_embedder import db, settings
from argus_embedder.settings import Settings


def connect(config: Settings) -> psycopg.Connection[Any]:
    """A migrated database's connection (autocommit), or a ConfigError saying why not."""
    return _connect_checked(db.resolve_url(config))


def connect_read(config: Settings) -> psycopg.Connection[Any]:
    """connect() for the commands that only read (search, status): to
    ARGUS_READ_DATABASE_URL where it is set (a hot standby), else the same server.
    What runs on it must not write: a standby refuses every write."""
    return _connect_checked(db.resolve_read_url(config))


def _connect_checked(url: str) -> psycopg.Connection[Any]:
    connection = db.connect_with_retry(url, autocommit=True, attempts=3)
    try:
        db.check_schema(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def short(text: str, limit: int = 200) -> str:
    """`text` quoted for a message, cut to `limit` characters (ids can be hostile)."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def configured_model() -> str:
    """ARGUS_MODEL as the daemons see it: this command's --model names another model."""
    return settings.load().model


def cannot(job_id: int, status: str | None, action: str) -> str:
    """Why an operator action on a job was refused."""
    if status is None:
        return f"no job {job_id}"
    return f"cannot {action} job {job_id}: it is {status}"
