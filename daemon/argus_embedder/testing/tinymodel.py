"""Tiny random SigLIP / SigLIP 2 checkpoints built locally, for tests, CI and an offline demo.

Nothing here downloads anything: the configuration, random weights, image processor and a
small Gemma-style tokenizer are written with `save_pretrained`, so `AutoModel`,
`AutoProcessor` and `AutoTokenizer.from_pretrained(directory)` work with no hub access.
The vectors such a model produces are meaningless for search quality; only their shape,
determinism and the preprocessing recipe are real.
"""

from __future__ import annotations

import importlib
import string
from pathlib import Path
from typing import Any, Literal

import torch
import transformers

Family = Literal["siglip", "siglip2"]

# Small but not degenerate: several tokens per image, two layers, two heads.
TINY_HIDDEN = 32
TINY_INTERMEDIATE = 64
TINY_LAYERS = 2
TINY_HEADS = 2
TINY_PATCH = 16
TINY_IMAGE_SIZE = 64  # fixed family: 4x4 = 16 patches
# NaFlex family: a 16x16 position grid and 256 patches per image, as the real checkpoints
# have; Siglip2Processor.__call__ forces max_num_patches=256 whatever the config says, so
# any other value would make the reference processor disagree with the checkpoint.
TINY_MAX_PATCHES = 256
TEXT_LENGTH = 64  # SigLIP text towers are trained on 64 tokens

# The real checkpoints' image recipe (google/siglip2-*): bilinear resize, /255, mean=std=0.5.
BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, as preprocessor_config.json stores it
HALF = [0.5, 0.5, 0.5]

SPECIAL_TOKENS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>", "mask": "<mask>"}


def build(directory: Path, family: Family = "siglip", *, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of `family` into `directory` and return the directory.

    `siglip` is the fixed-resolution family (`SiglipModel`, square resize); `siglip2` is
    NaFlex (`Siglip2Model`, aspect-preserving patch grids). The same seed gives the same
    weights, byte for byte.
    """
    from argus_embedder.pipeline.embedder import quiet_transformers

    with quiet_transformers():
        return _build(directory, family, seed)


def _build(directory: Path, family: Family, seed: int) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = _text_config(hidden=TINY_HIDDEN, layers=TINY_LAYERS, heads=TINY_HEADS)
    vision = _vision_config(hidden=TINY_HIDDEN, layers=TINY_LAYERS, heads=TINY_HEADS)
    vision["intermediate_size"] = TINY_INTERMEDIATE
    text["intermediate_size"] = TINY_INTERMEDIATE
    if family == "siglip":
        vision["image_size"] = TINY_IMAGE_SIZE
        config: transformers.PretrainedConfig = transformers.SiglipConfig(
            text_config=text, vision_config=vision
        )
        model_class: Any = transformers.SiglipModel
        image_processor: Any = _fixed_image_processor(TINY_IMAGE_SIZE)
    elif family == "siglip2":
        vision["num_patches"] = TINY_MAX_PATCHES
        config = transformers.Siglip2Config(text_config=text, vision_config=vision)
        model_class = transformers.Siglip2Model
        image_processor = _naflex_image_processor(TINY_PATCH, TINY_MAX_PATCHES)
    else:
        raise ValueError(f"unknown model family {family!r}: expected 'siglip' or 'siglip2'")
    _save_model(model_class, config, directory, seed)
    processor_class = (
        transformers.SiglipProcessor if family == "siglip" else transformers.Siglip2Processor
    )
    processor_class(image_processor=image_processor, tokenizer=_tokenizer()).save_pretrained(
        directory
    )
    return directory


def build_base_b16(directory: Path, *, seed: int = 0) -> Path:
    """Write the vision tower of google/siglip2-base-patch16-224 with random weights.

    Same architecture and image recipe as the real checkpoint (768 wide, 12 layers,
    12 heads, 224x224 input, 16x16 patches), so benchmarks measure real-size forwards
    without a download. There is no text tower: it is ~200M parameters that image
    workers never load.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vision = _vision_config(hidden=768, layers=12, heads=12)
    vision.update(intermediate_size=3072, image_size=224)
    config = transformers.SiglipVisionConfig(**vision)
    # transformers' own initialisation of 86M parameters takes seconds; any finite weights of
    # a sane scale serve a benchmark, so skip it and fill from a seeded generator.
    with _no_init_weights():
        model: Any = transformers.SiglipVisionModel(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2 or name.endswith("probe"):
                parameter.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("weight"):  # layer norms
                parameter.fill_(1.0)
            else:
                parameter.zero_()
    model.eval().save_pretrained(directory)
    _fixed_image_processor(224).save_pretrained(directory)
    return directory


def _no_init_weights() -> Any:
    """transformers' context that skips weight initialisation (it moved in transformers 5)."""
    try:
        module = importlib.import_module("transformers.initialization")
    except ImportError:  # transformers 4.x
        module = importlib.import_module("transformers.modeling_utils")
    return module.no_init_weights()


def _vision_config(*, hidden: int, layers: int, heads: int) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "patch_size": TINY_PATCH,
        "num_channels": 3,
    }


def _text_config(*, hidden: int, layers: int, heads: int) -> dict[str, Any]:
    vocab_size = len(_vocabulary())
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": TEXT_LENGTH,
        # The text head projects into the image embedding space.
        "projection_size": hidden,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }


def _save_model(
    model_class: Any, config: transformers.PretrainedConfig, directory: Path, seed: int
) -> None:
    # fork_rng: seeding must not disturb the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    model.save_pretrained(directory)


# What SigLIP checkpoints' processors do to pixels: bilinear resize, /255, mean=std=0.5.
_PIXELS: dict[str, Any] = {
    "resample": BILINEAR,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": HALF,
    "image_std": HALF,
}


def _fixed_image_processor(size: int) -> Any:
    return transformers.SiglipImageProcessorPil(
        do_resize=True,
        size={"height": size, "width": size},
        **_PIXELS,
    )


def _naflex_image_processor(patch_size: int, max_num_patches: int) -> Any:
    return transformers.Siglip2ImageProcessorPil(
        patch_size=patch_size,
        max_num_patches=max_num_patches,
        **_PIXELS,
    )


def _vocabulary() -> dict[str, int]:
    """Specials, byte-fallback tokens (as Gemma has) and single characters; no merges."""
    tokens = list(SPECIAL_TOKENS.values())
    tokens += [f"<0x{value:02X}>" for value in range(256)]
    tokens += ["▁", *(string.ascii_lowercase + string.digits + string.punctuation)]
    return {token: index for index, token in enumerate(tokens)}


def _tokenizer() -> Any:
    # SigLIP 2 checkpoints ship a Gemma tokenizer that pads on the right and ends with <eos>.
    return transformers.GemmaTokenizer(
        vocab=_vocabulary(),
        merges=[],
        unk_token=SPECIAL_TOKENS["unk"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        mask_token=SPECIAL_TOKENS["mask"],
        padding_side="right",
        add_bos_token=False,
        add_eos_token=True,
        model_max_length=TEXT_LENGTH,
    )
