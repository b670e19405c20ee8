"""`argus-embedder bench`: the DESIGN §7 figures (the bench package does the work)."""

from __future__ import annotations

import argparse

from argus_embedder.settings import Settings


def main(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.bench import suite

    only = [name.strip() for name in (args.only or "").split(",") if name.strip()]
    return suite.main(config, quick=args.quick, as_json=args.json, only=only)
