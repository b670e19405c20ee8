"""`argus-embedder run`: the daemon (runtime.daemon does the work)."""

from __future__ import annotations

import argparse

from argus_embedder.settings import Settings


def main(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.commands import common

    # Before torch is imported: the demo's model where it applies, and a model that
    # cannot be loaded here fails now, in one line, not after the hub's retries.
    config = common.resolve_model(config)
    from argus_embedder.runtime import daemon

    return daemon.run(config, burst=args.burst)
