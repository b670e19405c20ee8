"""`argus-embedder retry ID`: queue a failed, cancelled or finished job again."""

from __future__ import annotations

import argparse

import psycopg

from argus_embedder import errors
from argus_embedder.commands import common
from argus_embedder.gateways import queue
from argus_embedder.settings import Settings


def main(args: argparse.Namespace, config: Settings) -> int:
    with common.connect(config) as connection:
        try:
            retried = queue.retry(connection, args.job_id)
        except psycopg.errors.UniqueViolation:
            raise errors.UserInputError(
                f"job {args.job_id}: its video already has a queued job"
            ) from None
        if retried:
            print(f"job {args.job_id} queued again")
            return 0
        current = queue.job_status(connection, args.job_id)
    raise errors.UserInputError(common.cannot(args.job_id, current, "retry"))
