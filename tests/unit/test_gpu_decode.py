"""The GPU decode path (decoding.GpuDecoder) on CPU tensors: the same batching, fallback and
resize code as on CUDA, with torchvision decoding on CPU. Runs in the GPU-path venv
(torch 2.14.1 + torchvision 0.29.1, .ci/run); skips where torchvision is absent. Tests
that need a real GPU are marked `gpu` and skip without CUDA."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from argus_embedder import errors
from argus_embedder.pipeline import decoding, embedder, images, inference
from argus_embedder.pipeline.recipe import EncodedImage, PreparedImage
from tests.unit import test_decode_parity
from tests.unit.test_embedder import encode, textured
from tests.unit.test_ledger import make_job
from tests.unit.test_pipeline import prepared_item

pytest.importorskip("torchvision", reason="the GPU decode path needs torchvision")


def gpu_decoding(checkpoint: Path, device: str = "cpu") -> embedder.Embedder:
    """The tiny embedder with the GPU decoder, on `device`."""
    model = embedder.load_embedder(str(checkpoint), device=device, decode="cpu")
    model.recipe = dataclasses.replace(model.recipe, decode="gpu")
    model.decoder = decoding.GpuDecoder(model.recipe, torch.device(device))
    return model


def embed(model: embedder.Embedder, frames: list[bytes]) -> np.ndarray:
    return model.embed(model.finish_decoding([model.prepare(data) for data in frames]))


def test_gpu_path_keeps_parity_with_the_stock_path(tiny_siglip_dir: Path) -> None:
    frames = test_decode_parity.jpegs()
    model = gpu_decoding(tiny_siglip_dir)
    prepared = [model.prepare(data) for data in frames.values()]
    # CMYK goes to the CPU path in the decode processes; every other kind is left encoded.
    encoded = [isinstance(item, EncodedImage) for item in prepared]
    assert encoded == [not name.endswith("cmyk") for name in frames]
    ours = model.embed(model.finish_decoding(prepared))
    assert model.decoder.fallbacks == 0  # type: ignore[attr-defined]
    expected = test_decode_parity.stock_vectors(tiny_siglip_dir, list(frames.values()))
    cosines = dict(zip(frames, (ours * expected).sum(axis=1).tolist(), strict=True))
    worst = min(cosines, key=cosines.__getitem__)
    decoded = {name: cosine for name, cosine in cosines.items() if not name.endswith("cmyk")}
    worst_decoded = min(decoded, key=decoded.__getitem__)
    print(
        f"\nGPU path on CPU tensors: worst cosine {cosines[worst]:.6f} ({worst}); "
        f"of the frames it decoded {decoded[worst_decoded]:.6f} ({worst_decoded})"
    )
    assert cosines[worst] >= test_decode_parity.MIN_COSINE, cosines


def test_a_frame_the_decoder_refuses_falls_back_alone(tiny_siglip_dir: Path) -> None:
    good = encode(textured(640, 360, seed=1), "JPEG", quality=90)
    # Truncated: the header is sane (the decode process passes it on), the decoder refuses
    # it, and so does the CPU path: that frame's error, and only that frame's.
    corrupt = good[: len(good) // 2]
    cmyk = encode(textured(320, 240, seed=2).convert("CMYK"), "JPEG")
    model = gpu_decoding(tiny_siglip_dir)
    outputs = [model.prepare(data) for data in (good, corrupt, good, cmyk)]
    assert [type(item) for item in outputs] == [
        EncodedImage,
        EncodedImage,
        EncodedImage,
        PreparedImage,
    ]
    finished = model.finish_decoding(outputs)
    assert isinstance(finished[0], decoding.DevicePixels)
    assert isinstance(finished[2], decoding.DevicePixels)
    assert isinstance(finished[1], errors.FrameError), finished[1]
    assert isinstance(finished[3], PreparedImage)
    assert model.decoder.fallbacks == 1  # type: ignore[attr-defined]
    vectors = model.embed([finished[0], finished[2], finished[3]])
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


def test_garbage_is_refused_in_the_decode_process(tiny_siglip_dir: Path) -> None:
    model = gpu_decoding(tiny_siglip_dir)
    with pytest.raises(errors.FrameError, match="not an image"):
        model.prepare(b"<html>503</html>")
    png = encode(textured(97, 61), "PNG")
    assert isinstance(model.prepare(png), PreparedImage)  # not a JPEG: decoded on CPU


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_on_the_device_matches_pillow(orientation: int) -> None:
    picture = textured(7, 5, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright = images.decode(encode(picture, "PNG", exif=exif.tobytes()))
    pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1)
    oriented = decoding._oriented(pixels, orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(oriented, np.asarray(upright))


def test_gpu_pixels_are_close_to_the_cpu_path(tiny_siglip_dir: Path) -> None:
    data = encode(textured(1280, 720, seed=3), "JPEG", quality=90)
    model = gpu_decoding(tiny_siglip_dir)
    on_device = model.finish_decoding([model.prepare(data)])[0].pixels.numpy().astype(float)
    exact = images.preprocess_fixed(images.decode(data), model.recipe.size, 2)
    assert np.abs(on_device - exact).mean() < 2.0  # levels of 255


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_decode_on_cuda_matches_cpu_tensors(tiny_siglip_dir: Path) -> None:
    frames = list(test_decode_parity.jpegs().values())
    on_cuda = embed(gpu_decoding(tiny_siglip_dir, "cuda"), frames)
    on_cpu = embed(gpu_decoding(tiny_siglip_dir, "cpu"), frames)
    assert ((on_cuda * on_cpu).sum(axis=1) >= test_decode_parity.MIN_COSINE).all()


def test_a_batch_with_a_refused_frame_loses_nothing(tiny_siglip_dir: Path) -> None:
    # The worker's own batch step: every frame gets its row, the truncated one its error.
    good = [encode(textured(640, 360, seed=seed), "JPEG", quality=90) for seed in range(3)]
    truncated = good[0][: len(good[0]) // 2]
    model = gpu_decoding(tiny_siglip_dir)
    job = make_job(1)
    frames = [good[0], truncated, good[1], good[2]]
    batch = [
        prepared_item(job, 10 + index, model.prepare(data), last=index == len(frames) - 1)
        for index, data in enumerate(frames)
    ]
    result = inference.embed_batch(model, batch)
    assert result.failures == []
    [write] = result.writes
    assert write.complete
    rows = {row.frame_id: row for row in write.results}
    assert sorted(rows) == [10, 11, 12, 13]
    assert "truncated" in str(rows[11].error), rows[11].error
    assert all(rows[frame].vector is not None for frame in (10, 12, 13))


def test_embed_decodes_frames_left_encoded(tiny_siglip_dir: Path) -> None:
    # search --image and the bench's forward-only run call embed(prepare(data)) directly.
    data = encode(textured(640, 360, seed=4), "JPEG", quality=90)
    model = gpu_decoding(tiny_siglip_dir)
    direct = model.embed([model.prepare(data)])
    np.testing.assert_allclose(direct, embed(model, [data]), atol=1e-6)
    with pytest.raises(errors.FrameError, match="truncated"):
        model.embed([model.prepare(data[: len(data) // 2])])
