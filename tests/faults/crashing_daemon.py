"""`argus-embedder` whose image decoder hard-crashes the process on a poison frame.

A test harness, not a mock of what is tested: the real command line, worker, queue and
store run unchanged; only the decoder gains the failure mode of a native library that
segfaults on one particular input (any object whose bytes start with POISON). The
process dies by SIGSEGV, with no Python cleanup, exactly like such a crash.

    python -m tests.faults.crashing_daemon run
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from typing import Any

from argus_embedder import cli, embedder

POISON = b"POISON"
_prepare = embedder.Embedder.prepare


def _crashing_prepare(self: embedder.Embedder, data: bytes) -> Any:
    if data.startswith(POISON):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the test tree
        os.kill(os.getpid(), signal.SIGSEGV)
    return _prepare(self, data)


embedder.Embedder.prepare = _crashing_prepare  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
