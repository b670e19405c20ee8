"""The compactor: merges search units into larger ones, in tiers, off the write path.

Search probes every live unit, each an ANN index scan of a few milliseconds, so
a corpus split into ever more segments would search ever slower. The compactor
merges FANOUT adjacent live units of one tier into one unit of the next tier
(argus.unit_next, unit_fill, unit_publish in sql/migrations/0007_compaction.sql):
the copy and the bulk index build happen on a table nobody can see yet, and one
commit makes it live and retires the units it replaces, so a search finds every
committed vector exactly once, before, during and after a merge. A corpus of N
frame ids is then searched through at most (FANOUT - 1) units per tier, with
log_FANOUT(N / segment_rows) tiers. An ivfflat model's units grow in place instead
(argus.unit_append in sql/migrations/0008_growing_units.sql: IVFFlat takes inserts at
close to the COPY rate) and are rebuilt at twice the rows their lists were trained
on, so a query probes one unit whatever the corpus size. One compactor in the fleet at a time (the
indexer's transaction advisory lock, which unit builds share); retired units are
dropped after GRACE_SECONDS, when no search can still be reading them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from argus_embedder.gateways import index
from argus_embedder.services import periodic

log = logging.getLogger(__name__)

# Units merged into one of the next tier. Measured (docs/performance.md): 4 keeps
# the rows each vector is indexed ~1 + log4(N / segment) times while a query probes
# at most 3 units per tier.
FANOUT = 4
GRACE_SECONDS = 300.0  # a retired unit outlives any search that could still read it
CHECK_SECONDS = 30.0  # how often a daemon looks for a merge to do


def compact_once(connection: psycopg.Connection[Any], model: str) -> bool:
    """Do at most one unit step for `model` (an append, a sealed segment's unit, a merge,
    a rebuild of a grown ivfflat unit or in a new index kind) and drop expired retired
    units; True when it did work."""
    dropped = index.drop_retired(connection, model, grace_seconds=GRACE_SECONDS)
    index.prune_changes(connection, model)  # else the straggler log grows without bound
    if index.append_next(connection, model) is not None:
        return True  # logged by append_next
    unit_id = index.next_unit(connection, model, fanout=FANOUT, tier0_only=False)
    if unit_id is None:
        return dropped > 0
    started = time.monotonic()
    done = index.build_unit(connection, unit_id)
    if done is None:
        return False  # another daemon holds the lock, or the publish is retried next pass
    log.info(
        "compacted %s: tier %d unit [%d, %d) of %s rows (%s) in %.1fs",
        model,
        done.tier,
        done.lower_bound,
        done.upper_bound,
        done.rows,
        done.kind,
        time.monotonic() - started,
    )
    return True


def task(model: str) -> periodic.Task:
    """The daemon's compactor: every CHECK_SECONDS, merge until nothing is left to do.

    Run it on its own periodic service: a merge of large units takes minutes,
    which must not delay the other background passes.
    """
    return periodic.Task(
        name="compactor",
        interval=CHECK_SECONDS,
        run=lambda connection, stopping: _compact(connection, model, stopping),
        first_delay=CHECK_SECONDS,
    )


def _compact(connection: psycopg.Connection[Any], model: str, stopping: periodic.Stopping) -> None:
    while not stopping() and compact_once(connection, model):
        pass
