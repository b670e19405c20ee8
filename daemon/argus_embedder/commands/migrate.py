"""`argus-embedder migrate`: create or upgrade the schema and roles; with a model, its index."""

from __future__ import annotations

import argparse
import os
from typing import Any

import psycopg

from argus_embedder import db
from argus_embedder.gateways import index
from argus_embedder.settings import Settings


def main(args: argparse.Namespace, config: Settings) -> int:
    url = db.resolve_url(config)
    applied = db.migrate(url)
    print(f"schema at version {db.latest_version()} ({len(applied)} migration(s) applied)")
    model_given = args.model is not None or "ARGUS_MODEL" in os.environ
    if args.index is not None or model_given:
        from argus_embedder.pipeline import embedder

        dimension = embedder.model_dimension(config.model)
        with db.connect(url, autocommit=True) as connection:
            kind = _register_model(connection, config.model, dimension, args.index)
        print(f"model {config.model}: dimension {dimension}, index {kind or 'none'}")
    return 0


def _register_model(
    connection: psycopg.Connection[Any], model: str, dimension: int, kind: str | None
) -> str | None:
    """Register the model with index `kind` and build the index of its sealed segments."""
    registered = index.register(connection, model, dimension, kind)
    built = index.build_sealed(connection, model)
    if built:
        print(f"built {len(built)} segment index(es)")
    return None if registered.index_kind == "none" else registered.index_kind
