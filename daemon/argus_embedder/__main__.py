"""`python -m argus_embedder` is the same as the `argus-embedder` command."""

import sys

from argus_embedder import cli

# Guarded: decode processes (multiprocessing's forkserver) import the main module.
if __name__ == "__main__":
    sys.exit(cli.main())
