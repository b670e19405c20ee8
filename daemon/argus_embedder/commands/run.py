"""`argus-embedder run`: the daemon (runtime.daemon does the work)."""

from __future__ import annotations

import argparse

from argus_embedder.settings import Settings


def main(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.runtime import daemon

    return daemon.run(config, burst=args.burst)
