"""ARGUS_DECODE: the decoder is chosen once, `gpu` that cannot run is a configuration error
(exit 78), `auto` falls back to CPU silently; torchvision stays optional."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from argus_embedder import errors, settings
from argus_embedder.pipeline import decoding, embedder
from argus_embedder.pipeline.recipe import Recipe

FIXED = Recipe("fixed", 2, 1 / 255, (0.5,) * 3, (0.5,) * 3, size=(224, 224))
NAFLEX = Recipe("naflex", 2, 1 / 255, (0.5,) * 3, (0.5,) * 3, patch_size=16, max_num_patches=256)
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
CUDA = torch.device("cuda", 0)  # a device object only: choose() never touches it


def test_bad_decode_setting_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="ARGUS_DECODE='nvjpeg' is not one of"):
        settings.load({"ARGUS_DECODE": "nvjpeg"})
    assert settings.load({}).decode == "auto"
    assert settings.load({"ARGUS_DECODE": "gpu"}).decode == "gpu"


def test_cpu_device_decodes_on_cpu_and_gpu_is_refused() -> None:
    cpu = torch.device("cpu")
    assert decoding.choose("auto", cpu, FIXED) == "cpu"
    assert decoding.choose("cpu", cpu, FIXED) == "cpu"
    with pytest.raises(errors.ConfigError, match="ARGUS_DECODE=gpu but the model runs on cpu"):
        decoding.choose("gpu", cpu, FIXED)


def test_naflex_checkpoints_decode_on_cpu() -> None:
    assert decoding.choose("auto", CUDA, NAFLEX) == "cpu"
    with pytest.raises(errors.ConfigError, match="NaFlex"):
        decoding.choose("gpu", CUDA, NAFLEX)


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed in this venv")
def test_without_torchvision_auto_is_cpu_and_gpu_exits_78() -> None:
    assert decoding.choose("auto", CUDA, FIXED) == "cpu"
    with pytest.raises(errors.ConfigError, match=r"torchvision is not importable.*\[gpu\]"):
        decoding.choose("gpu", CUDA, FIXED)
    assert "torchvision" not in sys.modules  # nothing imported it as a side effect


@pytest.mark.skipif(not HAS_TORCHVISION, reason="needs torchvision (the GPU-path venv)")
def test_with_torchvision_a_cuda_device_decodes_on_gpu() -> None:
    assert decoding.choose("auto", CUDA, FIXED) == "gpu"
    assert decoding.choose("gpu", CUDA, FIXED) == "gpu"


def test_cpu_embedder_uses_the_cpu_decoder(tiny_siglip_dir: object) -> None:
    loaded = embedder.load_embedder(str(tiny_siglip_dir), device="cpu", decode="auto")
    assert loaded.decoder.name == "cpu"
    assert loaded.recipe.decode == "cpu"
    with pytest.raises(errors.ConfigError, match="ARGUS_DECODE=gpu"):
        embedder.load_embedder(str(tiny_siglip_dir), device="cpu", decode="gpu")
