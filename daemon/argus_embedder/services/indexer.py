"""The indexer: bulk-builds the ANN index of each sealed segment, off the write path.

One builder in the fleet at a time (argus.index_segment takes a transaction-level
advisory lock); it runs on its own periodic service, since a build can take a
minute, which must not delay the daemon's other background passes.
"""

from __future__ import annotations

from typing import Any

import psycopg

from argus_embedder.gateways import index
from argus_embedder.services import periodic

CHECK_SECONDS = 30.0  # how often a daemon looks for sealed segments to index


def task(model: str) -> periodic.Task:
    """The daemon's indexer: look for sealed segments of `model` every CHECK_SECONDS.

    Run it on its own periodic thread: a bulk build can take a minute, which
    must not delay the daemon's other background passes.
    """
    return periodic.Task(
        name="indexer",
        interval=CHECK_SECONDS,
        run=lambda connection, stopping: _build(connection, model, stopping),
        first_delay=CHECK_SECONDS,
    )


def _build(connection: psycopg.Connection[Any], model: str, stopping: periodic.Stopping) -> None:
    if not stopping():
        index.build_sealed(connection, model)
