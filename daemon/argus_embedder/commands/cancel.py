"""`argus-embedder cancel ID`: cancel a queued or running job (a worker stops at its next batch)."""

from __future__ import annotations

import argparse

from argus_embedder import errors
from argus_embedder.commands import common
from argus_embedder.gateways import queue
from argus_embedder.settings import Settings


def main(args: argparse.Namespace, config: Settings) -> int:
    with common.connect(config) as connection:
        if queue.cancel(connection, args.job_id):
            print(f"job {args.job_id} cancelled")
            return 0
        current = queue.job_status(connection, args.job_id)
    raise errors.UserInputError(common.cannot(args.job_id, current, "cancel"))
