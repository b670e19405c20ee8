"""The embedder against the Hugging Face reference pipeline, on tiny random checkpoints.

Reference: `AutoProcessor.from_pretrained(dir)` on the decoded image, then the full
`AutoModel.get_image_features(...).pooler_output`, L2-normalized. The decoded image is what
`transformers.image_utils.load_image` would give before its RGB conversion: Pillow's image
with EXIF orientation applied (see images.py for that choice); RGB conversion is left to the
processor, or done with HF's own `convert_to_rgb` where the checkpoint's processor does not
convert (SigLIP 2 NaFlex processors ship with `do_convert_rgb` unset).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from PIL import Image, ImageOps
from transformers.image_transforms import convert_to_rgb

from argus_embedder import errors, metrics
from argus_embedder.pipeline import embedder, images

MIN_COSINE = 0.9999


def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients plus noise and a few hard edges: content that resampling choices change."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            255 * x / width,
            255 * y / height,
            127 + 100 * np.sin(x / 7 + seed) * np.cos(y / 11),
        ],
        axis=-1,
    )
    base[(x // 37 + y // 23) % 5 == 0] = (250, 30, 60)
    pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _rgba() -> bytes:
    image = textured(300, 200, seed=1).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1))
    image.putalpha(Image.fromarray(alpha, "L"))
    return encode(image, "PNG")


def _palette_with_transparency() -> bytes:
    image = textured(257, 129, seed=2).quantize(64)
    return encode(image, "PNG", transparency=5)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    return encode(textured(400, 300, seed=3), "JPEG", quality=90, exif=exif.tobytes())


def _sixteen_bit() -> bytes:
    y, x = np.mgrid[0:120, 0:160]
    values = (x * 300 + y * 7) % 65536
    return encode(Image.fromarray(values.astype(np.uint16)), "PNG")


def _low_sixteen_bit() -> bytes:
    # 16-bit values that fit in 0..255: the case where Pillow's I;16 -> RGB keeps detail.
    rng = np.random.default_rng(4)
    return encode(Image.fromarray(rng.integers(0, 256, (90, 130)).astype(np.uint16)), "PNG")


SAMPLES: dict[str, Callable[[], bytes]] = {
    "jpeg-1280x720": lambda: encode(textured(1280, 720), "JPEG", quality=90),
    "jpeg-1920x1080-draft": lambda: encode(textured(1920, 1080, seed=5), "JPEG", quality=85),
    "png-97x301": lambda: encode(textured(97, 301, seed=6), "PNG"),
    "jpeg-640x640": lambda: encode(textured(640, 640, seed=7), "JPEG"),
    "png-rgba": _rgba,
    "png-palette-transparent": _palette_with_transparency,
    "png-grayscale": lambda: encode(textured(200, 150, seed=8).convert("L"), "PNG"),
    "jpeg-cmyk": lambda: encode(textured(320, 240, seed=9).convert("CMYK"), "JPEG"),
    "jpeg-exif-rotated": _exif_rotated,
    "png-16bit": _sixteen_bit,
    "png-16bit-low": _low_sixteen_bit,
    "webp-tiny-13x7": lambda: encode(textured(13, 7, seed=10), "WEBP", quality=90),
}


@pytest.fixture(scope="module")
def samples() -> dict[str, bytes]:
    return {name: make() for name, make in SAMPLES.items()}


@pytest.fixture(scope="module", params=["siglip", "siglip2"])
def checkpoint(request: pytest.FixtureRequest) -> Path:
    name = "tiny_siglip_dir" if request.param == "siglip" else "tiny_naflex_dir"
    path = request.getfixturevalue(name)
    assert isinstance(path, Path)
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> embedder.Embedder:
    return embedder.load_embedder(str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> tuple[Any, Any]:
    processor = transformers.AutoProcessor.from_pretrained(checkpoint)
    model = transformers.AutoModel.from_pretrained(checkpoint).eval()
    return processor, model


def reference_inputs(processor: Any, data: list[bytes]) -> Any:
    decoded: list[Any] = []
    for item in data:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(item)))
        if not processor.image_processor.do_convert_rgb:
            image = convert_to_rgb(image, return_numpy=True)
        decoded.append(image)
    return processor(images=decoded, return_tensors="pt")


def reference_vectors(reference: tuple[Any, Any], data: list[bytes]) -> np.ndarray:
    processor, model = reference
    with torch.inference_mode():
        output = model.get_image_features(**reference_inputs(processor, data))
    return torch.nn.functional.normalize(embedder.pooled(output), dim=-1).numpy()


def test_vectors_match_the_reference_pipeline(
    loaded: embedder.Embedder, reference: tuple[Any, Any], samples: dict[str, bytes]
) -> None:
    # Full decodes: decoding at the DCT floor has its own parity test over video-like
    # frames (test_decode_parity.py); this one's white-noise textures (sigma 30 per pixel)
    # are where a reduced decode differs most, down to cosine 0.996 on the tiny models.
    exact = dataclasses.replace(loaded.recipe, draft=False)
    names = list(samples)
    ours = loaded.embed([exact.prepare(samples[name]) for name in names])
    expected = reference_vectors(reference, [samples[name] for name in names])
    cosines = dict(zip(names, (ours * expected).sum(axis=1).tolist(), strict=True))
    assert min(cosines.values()) >= MIN_COSINE, cosines
    assert ours.dtype == np.float32
    assert ours.shape == (len(names), loaded.dimension)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_pixels_equal_the_reference_processor_without_draft(
    loaded: embedder.Embedder, reference: tuple[Any, Any], samples: dict[str, bytes]
) -> None:
    # The tiny random models barely tell a bilinear from a bicubic resize apart, so the
    # cosine above is a weak guard for preprocessing; pixels are a strict one.
    processor, _model = reference
    exact = embedder.load_embedder(str(loaded.model), device="cpu")
    exact.recipe = dataclasses.replace(exact.recipe, draft=False)
    for name, data in samples.items():
        expected = reference_inputs(processor, [data])["pixel_values"][0].numpy()
        ours = normalized(exact.recipe, exact.prepare(data))
        np.testing.assert_allclose(ours, expected, atol=1e-6, err_msg=name)


def normalized(recipe: embedder.Recipe, prepared: embedder.PreparedImage) -> np.ndarray:
    """The float pixels the model sees, in the reference processor's layout."""
    mean, std = np.array(recipe.mean), np.array(recipe.std)
    if recipe.family == "fixed":
        values = (prepared.pixels * recipe.rescale_factor - mean) / std
        return values.transpose(2, 0, 1).astype(np.float32)
    assert prepared.mask is not None
    count = prepared.pixels.shape[0]
    values = (prepared.pixels.reshape(count, -1, 3) * recipe.rescale_factor - mean) / std
    return (values.reshape(count, -1) * prepared.mask[:, None]).astype(np.float32)


def test_vision_tower_equals_full_model_image_features(
    checkpoint: Path, reference: tuple[Any, Any], samples: dict[str, bytes]
) -> None:
    processor, model = reference
    tower_class = (
        transformers.SiglipVisionModel
        if model.config.model_type == "siglip"
        else transformers.Siglip2VisionModel
    )
    tower = tower_class.from_pretrained(checkpoint).eval()
    inputs = reference_inputs(processor, [samples["jpeg-1280x720"], samples["png-97x301"]])
    with torch.inference_mode():
        full = embedder.pooled(model.get_image_features(**inputs))
        alone = embedder.pooled(tower(**inputs))
    torch.testing.assert_close(alone, full)


def test_dimension_and_recipe_come_from_the_checkpoint(
    loaded: embedder.Embedder, checkpoint: Path
) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    assert loaded.dimension == config["vision_config"]["hidden_size"]
    assert embedder.model_dimension(str(checkpoint)) == loaded.dimension
    assert loaded.device == "cpu"
    assert loaded.batch_size == embedder.CPU_BATCH_SIZE
    assert loaded.model == str(checkpoint)
    if config["model_type"] == "siglip":
        assert loaded.preprocessing == "siglip-fixed-64-bilinear-floor-v1"
    else:
        assert loaded.preprocessing == "siglip2-naflex-p16-n256-bilinear-floor-v1"


def test_batches_split_and_empty(loaded: embedder.Embedder, samples: dict[str, bytes]) -> None:
    prepared = [loaded.prepare(data) for data in samples.values()]
    whole = loaded.embed(prepared)
    small = embedder.load_embedder(str(loaded.model), device="cpu", batch_size=3)
    np.testing.assert_allclose(small.embed(prepared), whole, atol=1e-5)
    assert loaded.embed([]).shape == (0, loaded.dimension)
    loaded.warm_up()


def test_bad_frame_raises_frame_error(loaded: embedder.Embedder) -> None:
    with pytest.raises(errors.FrameError, match="not an image"):
        loaded.prepare(b"<html><body>503 Service Unavailable</body></html>")


def test_out_of_memory_halves_the_chunk_and_keeps_every_frame(
    monkeypatch: pytest.MonkeyPatch, samples: dict[str, bytes], tiny_siglip_dir: Path
) -> None:
    # No GPU here: simulate the allocator failing for chunks above two images.
    model = embedder.load_embedder(str(tiny_siglip_dir), device="cpu", batch_size=8)
    prepared = [model.prepare(data) for data in samples.values()]
    expected = model.embed(prepared)
    real_forward = model._vision
    chunk_sizes: list[int] = []

    def flaky_forward(**inputs: torch.Tensor) -> Any:
        chunk_sizes.append(inputs["pixel_values"].shape[0])
        if inputs["pixel_values"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(**inputs)

    monkeypatch.setattr(model, "_vision", flaky_forward)
    counted = metrics.value("argus_embedder_cuda_oom_total")
    vectors = model.embed(prepared)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert model.oom_count == 2
    assert metrics.value("argus_embedder_cuda_oom_total") == counted + 2  # on /metrics too
    assert model.batch_size == 2
    assert chunk_sizes[:3] == [8, 4, 2]


def test_out_of_memory_on_one_image_is_transient(
    monkeypatch: pytest.MonkeyPatch, samples: dict[str, bytes], tiny_siglip_dir: Path
) -> None:
    model = embedder.load_embedder(str(tiny_siglip_dir), device="cpu", batch_size=2)

    def always_oom(**inputs: torch.Tensor) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model, "_vision", always_oom)
    with pytest.raises(errors.TransientError, match="out of memory"):
        model.embed([model.prepare(samples["jpeg-640x640"])] * 2)
    assert model.oom_count == 2


@pytest.mark.parametrize(
    "model",
    ["/nonexistent/model/dir", "google/no-such-model-argus-test"],
)
def test_unloadable_model_is_a_config_error(model: str) -> None:
    with pytest.raises(errors.ConfigError, match="not loadable") as raised:
        embedder.load_embedder(model, device="cpu")
    assert model in str(raised.value)
    assert "\n" not in str(raised.value)
    with pytest.raises(errors.ConfigError):
        embedder.model_dimension(model)


def test_non_siglip_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(errors.ConfigError, match="expected SigLIP"):
        embedder.load_embedder(str(tmp_path), device="cpu")


def test_checkpoint_missing_weights_is_a_config_error(
    tmp_path: Path, tiny_siglip_dir: Path
) -> None:
    for name in ("config.json", "processor_config.json"):
        (tmp_path / name).write_bytes((tiny_siglip_dir / name).read_bytes())
    with pytest.raises(errors.ConfigError, match="weights not loadable"):
        embedder.load_embedder(str(tmp_path), device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_device_is_a_config_error(tiny_siglip_dir: Path) -> None:
    for device in ("cuda", "cuda:0"):
        with pytest.raises(errors.ConfigError, match="no usable CUDA device"):
            embedder.load_embedder(str(tiny_siglip_dir), device=device)


def test_unknown_device_is_a_config_error(tiny_siglip_dir: Path) -> None:
    with pytest.raises(errors.ConfigError, match="ARGUS_DEVICE"):
        embedder.load_embedder(str(tiny_siglip_dir), device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_auto_device_falls_back_to_cpu(
    tiny_siglip_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    embedder._warn_cpu_fallback.cache_clear()
    with caplog.at_level("WARNING", logger="argus_embedder.pipeline.embedder"):
        first = embedder.load_embedder(str(tiny_siglip_dir))
        embedder.load_embedder(str(tiny_siglip_dir))
    assert first.device == "cpu"
    warnings = [record for record in caplog.records if "CPU" in record.getMessage()]
    assert len(warnings) == 1


def test_prepared_images_pickle(loaded: embedder.Embedder, samples: dict[str, bytes]) -> None:
    prepared = loaded.prepare(samples["jpeg-640x640"])
    copy = pickle.loads(pickle.dumps(prepared))
    np.testing.assert_array_equal(copy.pixels, prepared.pixels)
    assert copy.spatial_shape == prepared.spatial_shape


def test_images_module_does_not_import_torch() -> None:
    code = "import sys, argus_embedder.pipeline.images; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=_env_with_daemon_path())


def _env_with_daemon_path() -> dict[str, str]:
    env = dict(os.environ)
    daemon = str(Path(images.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [daemon, env.get("PYTHONPATH")]))
    return env


def test_cuda_memory_is_published_from_the_allocators_counters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No GPU here: the allocator's counters are stood in for; the gauge shows them."""
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 4 * 2**30)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda device: dataclasses.make_dataclass("Props", ["total_memory"])(80 * 2**30),
    )
    embedder.publish_cuda_memory(torch.device("cuda:0"))
    shown = {
        kind: metrics.value("argus_embedder_cuda_memory_bytes", kind=kind)
        for kind in ("allocated", "reserved", "total")
    }
    assert shown == {"allocated": 3 * 2**30, "reserved": 4 * 2**30, "total": 80 * 2**30}
