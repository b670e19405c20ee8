"""`argus-embedder` that hard-crashes on a poison frame: in its decoder, or in its model.

A test harness, not a mock of what is tested: the real command line, worker, queue and
store run unchanged; only one native-library failure mode is added, for any object whose
bytes start with POISON. The process dies by SIGSEGV, with no Python cleanup, exactly
like such a crash. `TEST_CRASH_IN` picks where:

- `decoder` (default): the image decoder, which runs in the daemon's decode processes
  (started with fork here, so they inherit the patch);
- `model`: the forward pass, in the daemon process itself (the poison frame decodes to a
  marked image that the patched model crashes on).

    TEST_CRASH_IN=model python -m tests.faults.crashing_daemon run
"""

from __future__ import annotations

import faulthandler
import os
import resource
import signal
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from argus_embedder import cli
from argus_embedder.pipeline import embedder, preparing, recipe

POISON = b"POISON"
MARK = 7  # every pixel of a poison frame, in `model` mode
_prepare = recipe.Recipe.prepare
_embed = embedder.Embedder.embed


def _crash() -> None:
    faulthandler.disable()  # no traceback dump for an intended crash
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the test tree
    os.kill(os.getpid(), signal.SIGSEGV)


def _crashing_prepare(self: recipe.Recipe, data: bytes) -> Any:
    if data.startswith(POISON):
        _crash()
    return _prepare(self, data)


def _marking_prepare(self: recipe.Recipe, data: bytes) -> Any:
    if data.startswith(POISON):
        height, width = self.size
        return recipe.PreparedImage(np.full((height, width, 3), MARK, dtype=np.uint8))
    return _prepare(self, data)


def _crashing_embed(self: embedder.Embedder, images: Sequence[recipe.PreparedImage]) -> Any:
    if any(bool((image.pixels == MARK).all()) for image in images):
        _crash()
    return _embed(self, images)


def _patch() -> None:
    if os.environ.get("TEST_CRASH_IN", "decoder") == "model":
        recipe.Recipe.prepare = _marking_prepare  # type: ignore[method-assign]
        embedder.Embedder.embed = _crashing_embed  # type: ignore[method-assign]
    else:
        recipe.Recipe.prepare = _crashing_prepare  # type: ignore[method-assign]
    preparing.START_METHOD = "fork"  # the decode processes inherit the patch


if __name__ == "__main__":  # importing this module (for POISON) patches nothing
    _patch()
    sys.exit(cli.main(sys.argv[1:]))
