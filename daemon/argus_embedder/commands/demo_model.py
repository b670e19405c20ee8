"""Which model `demo` embedded with, so that `search` and `serve` with nothing configured
find the demo's frames.

Offline, the demo embeds with a tiny random SigLIP built under the user data dir. A
newcomer's next command (`argus-embedder search "a dog"`, no variable set) would ask
the default model, which has no vectors in that database (and may not even be
downloadable): so the demo records its model, and those commands fall back to it, saying
so plainly. Only on the embedded database and only with ARGUS_MODEL at its default:
a configured deployment never changes model behind the operator's back.
common.resolve_model() is the one place every command asks.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import psycopg

from argus_embedder import db, settings
from argus_embedder.gateways import index
from argus_embedder.settings import Settings


def record_path() -> Path:
    """The record, beside the embedded server's data dir (one per user)."""
    return db.embedded_data_dir().parent / "demo-model.json"


def record(model: str, *, tiny: bool) -> None:
    """Remember the model the demo embedded with (and whether it is the tiny random one)."""
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model, "tiny": tiny}) + "\n", encoding="utf-8")


def may_apply(config: Settings) -> bool:
    """Whether the demo's model could replace `config`'s: the embedded database,
    ARGUS_MODEL at its default, and a demo record here. Asks no database."""
    return (
        config.database_url is None
        and config.read_database_url is None
        and config.model == settings.DEFAULT_MODEL
        and _read() is not None
    )


def chosen(config: Settings, connection: psycopg.Connection[Any]) -> Settings:
    """`config`, or `config` with the demo's model when may_apply() holds, the default
    model has no vectors in this database and the demo's model has; said on stderr."""
    if not may_apply(config) or index.info(connection, config.model) is not None:
        return config
    demo = _read()
    if demo is None or index.info(connection, demo[0]) is None:
        return config
    model, tiny = demo
    quality = (
        "\n  It is a TINY RANDOM SigLIP built offline: its results are meaningless for quality."
        if tiny
        else ""
    )
    print(
        f"argus-embedder: ARGUS_MODEL is unset and {config.model} has no vectors in this "
        f"database; using the model `argus-embedder demo` embedded with, {model}.{quality}",
        file=sys.stderr,
    )
    return dataclasses.replace(config, model=model)


def _read() -> tuple[str, bool] | None:
    try:
        data = json.loads(record_path().read_text(encoding="utf-8"))
        return str(data["model"]), bool(data["tiny"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no demo ran here, or its record is unreadable: nothing to fall back to
