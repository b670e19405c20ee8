"""What several commands share: a migrated database's connection, safe quoting."""

from __future__ import annotations

import dataclasses
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


def resolve_model(
    config: Settings,
    connection: psycopg.Connection[Any] | None = None,
    *,
    loads: bool = True,
) -> Settings:
    """`config` with the model every command uses (run, search, serve, status, backfill):
    ARGUS_MODEL, or on the embedded database with ARGUS_MODEL unset the model `demo`
    embedded with (said once on stderr). With `loads` (the command loads it), a model
    that cannot be loaded here is a ConfigError now, in about a second, before torch is
    imported; a cached hub model with no hub in reach loads offline. `connection` is
    asked whether the demo's model applies; without one, a connection is opened only
    when a demo record exists."""
    from argus_embedder import hub
    from argus_embedder.commands import demo_model

    if demo_model.may_apply(config):
        if connection is None:
            with connect(config) as own:
                config = demo_model.chosen(config, own)
        else:
            config = demo_model.chosen(config, connection)
    if loads:
        hub.ensure_loadable(config.model)
    return config


def configured_model(
    config: Settings | None = None, connection: psycopg.Connection[Any] | None = None
) -> str:
    """The daemons' model: ARGUS_MODEL (this command's --model names another model), or,
    given `config` and `connection`, the model resolve_model() gives the daemons."""
    model = settings.load().model
    if config is None or connection is None:
        return model
    return resolve_model(dataclasses.replace(config, model=model), connection, loads=False).model


def cannot(job_id: int, status: str | None, action: str) -> str:
    """Why an operator action on a job was refused."""
    if status is None:
        return f"no job {job_id}"
    return f"cannot {action} job {job_id}: it is {status}"
