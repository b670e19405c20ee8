"""`python -m argus_embedder` is the same as the `argus-embedder` command."""

import sys

from argus_embedder import cli

sys.exit(cli.main())
