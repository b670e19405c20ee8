"""`argus-embedder prune`: remove an old model's vectors once nothing uses it any more.

Each model's vectors are one partition of argus.frame_embeddings, so the rows
and their indexes go at once with it (argus.drop_model, the schema owner's
definer function): no row-by-row DELETE, no vacuum debt. The drop holds an
ACCESS EXCLUSIVE lock on the parent table for a moment; it waits at most
LOCK_TIMEOUT for it and retries, so it never stalls searches and writes
behind a long query.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from typing import Any

import psycopg

from argus_embedder import db, errors
from argus_embedder.commands import common
from argus_embedder.gateways import index, queue, workers
from argus_embedder.settings import Settings

log = logging.getLogger(__name__)

LOCK_TIMEOUT = "2s"
ATTEMPTS = 30


@dataclasses.dataclass(frozen=True)
class PruneResult:
    rows: int  # vectors and error rows removed
    cancelled_jobs: int  # queued jobs naming the model (nobody would claim them)


def prune(
    connection: psycopg.Connection[Any],
    model: str,
    *,
    configured_model: str,
    force: bool = False,
    attempts: int = ATTEMPTS,
) -> PruneResult:
    """Drop `model`'s vectors and registration; refuses while it is still in use unless `force`."""
    q = db.queries()
    if model == configured_model and not force:
        raise errors.UserInputError(
            f"{model} is the configured model (ARGUS_MODEL): switch the daemons and search "
            "to the new model first (or pass --force)"
        )
    users = [
        info.worker_id
        for info in workers.recent(connection)
        if info.model == model and info.stopped_at is None
    ]
    if users and not force:
        raise errors.UserInputError(
            f"daemon(s) {', '.join(users)} still run {model}: restart them with the new "
            "model first (or pass --force)"
        )
    if index.info(connection, model) is None:
        raise errors.UserInputError(f"model {model!r} is not registered in this database")
    counted = connection.execute(q["model_rows"], {"model": model}).fetchone()
    rows = 0 if counted is None else int(counted["with_row"])
    for attempt in range(1, attempts + 1):
        try:
            with connection.transaction():
                cancelled = queue.cancel_queued_of_model(connection, model)
                index.unregister(connection, model, lock_timeout=LOCK_TIMEOUT)
        except psycopg.errors.LockNotAvailable:
            if attempt == attempts:
                raise errors.ArgusError(
                    f"could not lock argus.frame_embeddings to drop {model} in {attempts} "
                    "tries: a long query holds it; try again later"
                ) from None
            log.info("frame_embeddings is busy; retrying the drop (%d/%d)", attempt, attempts)
            time.sleep(1.0)
            continue
        except psycopg.errors.InsufficientPrivilege as error:
            raise errors.UserInputError(
                "prune needs the schema owner's role (like migrate): " + errors.first_line(error)
            ) from error
        return PruneResult(rows=rows, cancelled_jobs=cancelled)
    raise AssertionError("unreachable")


def main(args: argparse.Namespace, config: Settings) -> int:
    """`argus-embedder prune --model OLD [--force]`."""
    if args.model is None:
        raise errors.UserInputError("prune needs --model OLD, the model to remove")
    with common.connect(config) as connection:
        result = prune(
            connection, config.model, configured_model=common.configured_model(), force=args.force
        )
    print(
        f"pruned {config.model}: {result.rows} row(s) and its index dropped, "
        f"{result.cancelled_jobs} queued job(s) cancelled"
    )
    return 0
