"""DESIGN §5 precision: half precision on CUDA, and a batch whose vectors come back
non-finite is recomputed in float32 before any frame of it gets an error row.

No GPU here: the tiny model runs in bfloat16 on CPU, and a forward hook makes the
half-precision pass give NaN/inf, as a float16 overflow would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from argus_embedder.gateways import store
from argus_embedder.pipeline import embedder
from tests.unit.test_embedder import encode, textured


def poisoned(checkpoint: Path, *, also_float32: bool = False) -> embedder.Embedder:
    """The tiny embedder in bfloat16 whose half-precision forwards give non-finite rows."""
    model = embedder.load_embedder(str(checkpoint), device="cpu", decode="cpu")
    vision: torch.nn.Module = model._vision
    vision.to(torch.bfloat16)
    model._dtype = torch.bfloat16

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        half = output.pooler_output.dtype != torch.float32
        if half or also_float32:
            output.pooler_output[0] = float("nan")
            output.pooler_output[-1, 0] = float("inf")
        return output

    vision.register_forward_hook(hook)
    return model


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return [encode(textured(320, 240, seed=seed), "JPEG", quality=90) for seed in range(4)]


def test_non_finite_batch_is_recomputed_in_float32(
    tiny_siglip_dir: Path, frames: list[bytes]
) -> None:
    model = poisoned(tiny_siglip_dir)
    reference = embedder.load_embedder(str(tiny_siglip_dir), device="cpu", decode="cpu")
    reference._vision.to(torch.bfloat16).to(torch.float32)  # the same rounded weights
    prepared = [model.prepare(data) for data in frames]
    vectors = model.embed(prepared)
    assert np.isfinite(vectors).all()
    assert model.float32_retries == 1
    np.testing.assert_allclose(vectors, reference.embed(prepared), atol=1e-5)
    assert next(model._vision.parameters()).dtype == torch.bfloat16  # back to half after
    assert all(store.embedded(1, vector).error is None for vector in vectors)


def test_still_non_finite_in_float32_becomes_error_rows_only_for_those_frames(
    tiny_siglip_dir: Path, frames: list[bytes]
) -> None:
    model = poisoned(tiny_siglip_dir, also_float32=True)
    vectors = model.embed([model.prepare(data) for data in frames])
    assert model.float32_retries == 1
    rows = [store.embedded(index, vector) for index, vector in enumerate(vectors)]
    assert [row.error is not None for row in rows] == [True, False, False, True]


def test_half_precision_on_cuda_float32_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert embedder.model_dtype(torch.device("cpu")) == torch.float32
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device=None: (9, 0))
    assert embedder.model_dtype(cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device=None: (7, 5))
    assert embedder.model_dtype(cuda) == torch.float16
