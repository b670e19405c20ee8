"""Decode processes against the real S3 endpoint: same results as threads, errors that
travel, and a frame that kills its process found and recorded, with the pool carrying on."""

from __future__ import annotations

import faulthandler
import functools
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from argus_embedder import errors, settings
from argus_embedder.pipeline import embedder, preparing, recipe, storage
from tests.conftest import S3Endpoint, textured_jpeg

POISON = b"POISON"


@pytest.fixture(scope="module")
def tiny_recipe(tiny_siglip_dir: Path) -> recipe.Recipe:
    return embedder.load_embedder(str(tiny_siglip_dir), "cpu", batch_size=4).recipe


@pytest.fixture
def frames(s3: S3Endpoint) -> list[str]:
    """Six good frames, a missing object and bytes that are no image."""
    uris = [s3.put(f"f/{seed}.jpg", textured_jpeg(seed, (320, 180))) for seed in range(6)]
    return [*uris, f"s3://{s3.bucket}/f/absent.jpg", s3.put("f/page.jpg", b"<html>503</html>")]


@pytest.fixture
def frame_storage(s3: S3Endpoint) -> storage.Storage:
    return storage.Storage(settings.load(env={}, s3_endpoint_url=s3.url), attempts=2)


@pytest.fixture
def forked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Decode processes forked from this one, so they see this module's functions."""
    monkeypatch.setattr(preparing, "START_METHOD", "fork")
    yield


def results(preparer: preparing.Preparer, uris: list[str]) -> list[Any]:
    try:
        return [future.result(timeout=60).output for future in preparer.submit(uris)]
    finally:
        preparer.close()


def test_processes_return_exactly_what_threads_return(
    tiny_recipe: recipe.Recipe, frames: list[str], frame_storage: storage.Storage
) -> None:
    threads = results(preparing.ThreadPreparer(frame_storage, tiny_recipe.prepare, 4), frames)
    processes = results(preparing.ProcessPreparer(frame_storage, tiny_recipe.prepare, 2), frames)

    for ours, reference in zip(processes, threads, strict=True):
        if isinstance(reference, Exception):
            assert type(ours) is type(reference) and str(ours) == str(reference)
        else:
            assert np.array_equal(ours.pixels, reference.pixels)
    assert [type(output).__name__ for output in processes[-2:]] == ["FrameError"] * 2
    assert "NoSuchKey" in str(processes[-2])


def _crash_on_poison(inner: preparing.Prepare, data: bytes) -> Any:
    if data.startswith(POISON):
        faulthandler.disable()  # no traceback dump for an intended crash
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), signal.SIGSEGV)
    if data.startswith(b"RAISE"):
        raise _Unpicklable(lambda: None)
    return inner(data)


class _Unpicklable(Exception):
    """An exception whose argument cannot pickle (a lambda)."""


@pytest.mark.usefixtures("forked")
def test_a_frame_that_kills_its_process_becomes_its_error_and_the_pool_carries_on(
    tiny_recipe: recipe.Recipe, frames: list[str], frame_storage: storage.Storage, s3: S3Endpoint
) -> None:
    poison = s3.put("f/poison.jpg", POISON + b" segfaults the decoder")
    prepare = functools.partial(_crash_on_poison, tiny_recipe.prepare)
    preparer = preparing.ProcessPreparer(frame_storage, prepare, 2)
    # Two chunks in flight, the poison in the first: both are re-run one at a time.
    batch = [*frames[:3], poison, *frames[3:6], *frames[:6]]
    outputs = [future.result(timeout=120).output for future in preparer.submit(batch)]
    after = [future.result(timeout=60).output for future in preparer.submit(frames[:6])]
    preparer.close()

    failed = [index for index, output in enumerate(outputs) if isinstance(output, Exception)]
    assert failed == [3]
    assert isinstance(outputs[3], errors.FrameError)
    assert "killed the decode process" in str(outputs[3])
    assert preparer.poisoned == 1
    good = [output for output in outputs if not isinstance(output, Exception)]
    assert all(output.pixels.shape == good[0].pixels.shape for output in good)
    assert not any(isinstance(output, Exception) for output in after)


@pytest.mark.usefixtures("forked")
def test_an_unexpected_error_crosses_by_name_even_when_it_cannot_pickle(
    tiny_recipe: recipe.Recipe, frame_storage: storage.Storage, s3: S3Endpoint
) -> None:
    odd = s3.put("f/raise.jpg", b"RAISE")
    prepare = functools.partial(_crash_on_poison, tiny_recipe.prepare)
    [output] = results(preparing.ProcessPreparer(frame_storage, prepare, 1), [odd])
    assert type(output) is errors.ArgusError and str(output).startswith("_Unpicklable: ")
