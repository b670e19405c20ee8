"""Tiny checkpoints load offline with the stock Auto classes and are reproducible."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from argus_embedder.pipeline import embedder
from argus_embedder.testing import tinymodel


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_build_loads_offline_with_auto_classes(tmp_path: Path, family: tinymodel.Family) -> None:
    path = tinymodel.build(tmp_path, family=family)
    assert path == tmp_path
    model = transformers.AutoModel.from_pretrained(path)
    processor = transformers.AutoProcessor.from_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    expected = transformers.SiglipModel if family == "siglip" else transformers.Siglip2Model
    assert type(model) is expected
    assert model.config.vision_config.hidden_size == tinymodel.TINY_HIDDEN
    assert processor.image_processor.resample == tinymodel.BILINEAR
    assert list(processor.image_processor.image_mean) == [0.5, 0.5, 0.5]
    tokens = tokenizer(["a photo"], padding="max_length", max_length=64)["input_ids"][0]
    assert len(tokens) == 64
    assert tokenizer.pad_token_id == 0
    assert tokens[-1] == tokenizer.pad_token_id  # padded on the right, like the real ones
    assert tokenizer.eos_token_id in tokens


def test_build_is_deterministic_per_seed(tmp_path: Path) -> None:
    first = load_file(
        tinymodel.build(tmp_path / "a", family="siglip2", seed=7) / "model.safetensors"
    )
    again = load_file(
        tinymodel.build(tmp_path / "b", family="siglip2", seed=7) / "model.safetensors"
    )
    other = load_file(
        tinymodel.build(tmp_path / "c", family="siglip2", seed=8) / "model.safetensors"
    )
    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_build_leaves_the_global_random_state_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tinymodel.build(tmp_path, family="siglip")
    assert torch.equal(torch.rand(3), expected)


def test_build_is_fast(tmp_path: Path) -> None:
    tinymodel.build(tmp_path / "warm", family="siglip")  # first use imports model code
    for family in ("siglip", "siglip2"):
        started = time.perf_counter()
        tinymodel.build(tmp_path / family, family=family)
        assert time.perf_counter() - started < 2.0


def test_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model family"):
        tinymodel.build(tmp_path, family="clip")  # type: ignore[arg-type]


def test_base_b16_has_the_real_architecture(tmp_path: Path) -> None:
    path = tinymodel.build_base_b16(tmp_path)
    config = transformers.AutoConfig.from_pretrained(path)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        768,
        12,
        12,
    )
    assert (config.intermediate_size, config.image_size, config.patch_size) == (3072, 224, 16)
    loaded = embedder.load_embedder(str(path), device="cpu", batch_size=2)
    assert loaded.dimension == 768
    assert loaded.preprocessing.startswith("siglip-fixed-224-bilinear-")
    loaded.warm_up()
