"""Text queries against the Hugging Face reference, on tiny random checkpoints of both families.

Reference: `AutoTokenizer(text.lower(), padding="max_length", max_length=64)` and the full
model's `get_text_features(input_ids=...)` with no attention mask, L2-normalized: how
SigLIP was trained and how its model card says to query it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from argus_embedder import errors
from argus_embedder.pipeline import embedder

MIN_COSINE = 0.9999
QUERIES = [
    "a photo of a dog",
    "A Red CAR on a Wet Road at Night!",
    "",
    "über-café 東京 42",  # outside the tiny vocabulary: byte fallback
    "word " * 100,  # longer than 64 tokens: truncated
]


@pytest.fixture(scope="module", params=["siglip", "siglip2"])
def checkpoint(request: pytest.FixtureRequest) -> Path:
    name = "tiny_siglip_dir" if request.param == "siglip" else "tiny_naflex_dir"
    path = request.getfixturevalue(name)
    assert isinstance(path, Path)
    return path


@pytest.fixture(scope="module")
def encoder(checkpoint: Path) -> embedder.TextEncoder:
    return embedder.load_text_encoder(str(checkpoint), device="cpu")


def reference_vectors(checkpoint: Path, texts: list[str]) -> np.ndarray:
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    model = transformers.AutoModel.from_pretrained(checkpoint).eval()
    tokens = tokenizer(
        [text.lower() for text in texts],
        padding="max_length",
        max_length=64,
        truncation=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        output = model.get_text_features(input_ids=tokens["input_ids"])
    return torch.nn.functional.normalize(embedder.pooled(output), dim=-1).numpy()


def test_text_vectors_match_the_reference(encoder: embedder.TextEncoder, checkpoint: Path) -> None:
    ours = encoder.embed_texts(QUERIES)
    expected = reference_vectors(checkpoint, QUERIES)
    cosines = (ours * expected).sum(axis=1)
    assert cosines.min() >= MIN_COSINE, dict(zip(QUERIES, cosines.tolist(), strict=True))
    assert ours.dtype == np.float32
    assert ours.shape == (len(QUERIES), encoder.dimension)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_text_and_image_vectors_share_a_space(
    encoder: embedder.TextEncoder, checkpoint: Path
) -> None:
    assert encoder.dimension == embedder.model_dimension(str(checkpoint))
    assert encoder.device == "cpu"
    assert encoder.model == str(checkpoint)


def test_queries_are_lowercased(encoder: embedder.TextEncoder) -> None:
    vectors = encoder.embed_texts(["A Dog", "a dog", "a cat"])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert float(vectors[1] @ vectors[2]) < 0.99999


def test_padding_is_attended_as_in_training(
    encoder: embedder.TextEncoder, checkpoint: Path
) -> None:
    # Passing the tokenizer's attention mask would give different vectors: the guard
    # against a well-meant "fix" that would silently change every query.
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    model = transformers.AutoModel.from_pretrained(checkpoint).eval()
    tokens = tokenizer(["a dog"], padding="max_length", max_length=64, return_tensors="pt")
    with torch.inference_mode():
        masked = embedder.pooled(model.get_text_features(**tokens))
    masked_unit = torch.nn.functional.normalize(masked, dim=-1).numpy()
    assert float(encoder.embed_texts(["a dog"])[0] @ masked_unit[0]) < 0.9999


def test_no_queries(encoder: embedder.TextEncoder) -> None:
    assert encoder.embed_texts([]).shape == (0, encoder.dimension)


def test_vision_only_checkpoint_has_no_text_tower(tmp_path: Path) -> None:
    config = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    transformers.SiglipVisionModel(config).save_pretrained(tmp_path)
    with pytest.raises(errors.ConfigError, match="no text tower"):
        embedder.load_text_encoder(str(tmp_path), device="cpu")


def test_missing_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="not loadable"):
        embedder.load_text_encoder(str(tmp_path / "missing"), device="cpu")
