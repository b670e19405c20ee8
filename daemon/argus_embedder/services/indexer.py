"""The indexer: bulk-builds the ANN index of each sealed segment, off the write path,
and creates segments ahead of the write frontier, so writes never run DDL.

One builder in the fleet at a time (each unit build takes the indexer's transaction-level
advisory lock); it runs on its own periodic service, since a build can take a
minute, which must not delay the daemon's other background passes. Segment
creation is a separate, quick task on the background service.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from argus_embedder.gateways import index
from argus_embedder.services import periodic

log = logging.getLogger(__name__)

CHECK_SECONDS = 30.0  # how often a daemon looks for sealed segments to index
# How often a daemon creates the segments ahead of the newest frame: two segments
# of 100,000 ids last 40 s at a GPU's 5k frames/s, so this keeps well ahead.
SEGMENTS_SECONDS = 5.0


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


def segments_task(model: str) -> periodic.Task:
    """The daemon's segment creation: every SEGMENTS_SECONDS, the segment holding the
    newest frame and the next ones, so the write path finds them attached."""
    return periodic.Task(
        name="segments",
        interval=SEGMENTS_SECONDS,
        run=lambda connection, stopping: _precreate(connection, model, stopping),
    )


def _precreate(
    connection: psycopg.Connection[Any], model: str, stopping: periodic.Stopping
) -> None:
    if not stopping():
        created = index.precreate(connection, model)
        if created:
            log.debug("created segments %s of %s ahead of the writes", created, model)
