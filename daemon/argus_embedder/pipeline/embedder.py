"""SigLIP / SigLIP 2 image and text towers: load once, turn frames and queries into unit vectors.

Image workers load the vision tower only (`SiglipVisionModel` for fixed-resolution
checkpoints, `Siglip2VisionModel` for NaFlex ones) straight from the full checkpoint; its
`pooler_output` is what the full model's `get_image_features` returns. Decoding and resizing
happen on CPU threads in `prepare` (see `images`); `embed` does /255 and mean/std on the
device, so only uint8 pixels cross the host-device bus.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import transformers
from PIL import Image

from argus_embedder import errors, hub, metrics
from argus_embedder.pipeline import decoding
from argus_embedder.pipeline.recipe import EncodedImage, Family, PreparedImage, Recipe

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# config.model_type -> family; the *_vision_model types are vision-only checkpoints.
FAMILIES: dict[str, Family] = {
    "siglip": "fixed",
    "siglip_vision_model": "fixed",
    "siglip2": "naflex",
    "siglip2_vision_model": "naflex",
}
CPU_BATCH_SIZE = 32
MAX_AUTO_BATCH_SIZE = 256
TEXT_LENGTH = 64  # SigLIP text towers were trained on 64 tokens, padded, unmasked


class Embedder:
    """A loaded vision tower plus its preprocessing; `prepare` is thread-safe, `embed` is not."""

    def __init__(
        self,
        *,
        model: str,
        vision: torch.nn.Module,
        recipe: Recipe,
        device: torch.device,
        batch_size: int,
        dimension: int,
        decoder: decoding.Decoder | None = None,
    ) -> None:
        self.model = model
        self.dimension = dimension
        self.device = str(device)
        self.batch_size = batch_size
        self.preprocessing = recipe.id
        self.oom_count = 0
        self.recipe = recipe
        self._vision = vision
        self._torch_device = device
        self._dtype = next(vision.parameters()).dtype
        # x * scale - offset == (x * rescale_factor - mean) / std, on the device.
        std = torch.tensor(recipe.std, dtype=torch.float32)
        self._scale = (recipe.rescale_factor / std).to(device)
        self._offset = (torch.tensor(recipe.mean, dtype=torch.float32) / std).to(device)
        self._staging: dict[tuple[str | int, ...], torch.Tensor] = {}
        self.decoder: decoding.Decoder = decoder or decoding.CpuDecoder()
        self.float32_retries = 0  # chunks recomputed in float32 for non-finite vectors

    def prepare(self, data: bytes) -> Any:
        """Decode and resize one encoded image (a PreparedImage; with GPU decoding a JPEG
        stays encoded for `finish_decoding`); raises errors.FrameError for a bad image."""
        return self.recipe.prepare(data)

    def finish_decoding(self, outputs: Sequence[Any]) -> list[Any]:
        """A batch's prepared frames, decoded where the decoder left that to the device:
        each becomes pixels `embed` takes, or the FrameError it is recorded with."""
        return self.decoder.finish(outputs)

    def prepare_image(self, image: Any) -> PreparedImage:
        """Like `prepare` for an already decoded RGB PIL image (no draft decoding)."""
        return self.recipe.prepare_image(image)

    def embed(self, images: Sequence[PreparedImage]) -> FloatArray:
        """(len(batch), dimension) float32 unit vectors, in order.

        Runs in chunks of `batch_size`; on CUDA out-of-memory the chunk is halved and retried,
        so no frame is dropped, and `batch_size` stays at the size that fit.
        """
        images = self._decoded(images)
        vectors: list[FloatArray] = []
        start = 0
        while start < len(images):
            chunk = images[start : start + self.batch_size]
            try:
                vectors.append(self._finite_forward(chunk))
                out_of_memory = False
            except torch.cuda.OutOfMemoryError:
                out_of_memory = True
            if out_of_memory:
                # Outside the except block, so the traceback no longer pins the failed
                # chunk's activations when the cache is emptied.
                self._shrink_after_oom(len(chunk))
                continue
            start += len(chunk)
        if self._torch_device.type == "cuda":
            publish_cuda_memory(self._torch_device)
        if not vectors:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate(vectors)

    def _decoded(self, images: Sequence[Any]) -> Sequence[Any]:
        """Frames still encoded (a caller that skipped `finish_decoding`, such as `search
        --image`) are decoded now; a frame that cannot be raises its FrameError."""
        if not any(isinstance(item, EncodedImage) for item in images):
            return images
        finished = self.finish_decoding(images)
        for item in finished:
            if isinstance(item, Exception):
                raise item
        return finished

    def warm_up(self) -> None:
        """One forward pass on a dummy batch: allocates kernels and memory before real work."""
        grey = Image.new("RGB", (64, 64), (128, 128, 128))
        count = self.batch_size if self._torch_device.type == "cuda" else 1
        self.embed([self.prepare_image(grey)] * count)

    def _shrink_after_oom(self, chunk_size: int) -> None:
        self.oom_count += 1
        metrics.CUDA_OOM.inc()
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()
        if chunk_size <= 1:
            raise errors.TransientError(f"CUDA out of memory embedding one image on {self.device}")
        self.batch_size = min(self.batch_size, chunk_size // 2)
        log.warning(
            "CUDA out of memory with %d images on %s; retrying in chunks of %d",
            chunk_size,
            self.device,
            self.batch_size,
        )

    def _finite_forward(self, chunk: Sequence[Any]) -> FloatArray:
        """The chunk's vectors; if half precision gave a non-finite one, the chunk again in
        float32 (DESIGN §5) before any frame of it gets an error row (store.embedded)."""
        vectors = self._forward(chunk, self._dtype)
        if self._dtype == torch.float32 or np.isfinite(vectors).all():
            return vectors
        self.float32_retries += 1
        log.warning(
            "%s gave non-finite vectors for %d frame(s); recomputing the batch in float32",
            self._dtype,
            int((~np.isfinite(vectors).all(axis=1)).sum()),
        )
        # In place and back: float16/bfloat16 -> float32 -> the same dtype is exact.
        self._vision.to(torch.float32)
        try:
            return self._forward(chunk, torch.float32)
        finally:
            self._vision.to(self._dtype)

    @torch.inference_mode()
    def _forward(self, chunk: Sequence[Any], dtype: torch.dtype) -> FloatArray:
        pixels = self._pixels(chunk)
        if self.recipe.family == "fixed":
            # (n, H, W, 3) uint8 -> (n, 3, H, W) normalized
            values = (pixels.float() * self._scale - self._offset).permute(0, 3, 1, 2)
            output = self._vision(pixel_values=values.to(dtype))
        else:
            mask = self._to_device(np.stack([_mask(item) for item in chunk]))
            shapes = torch.tensor([item.spatial_shape for item in chunk], dtype=torch.long)
            count, patches, width = pixels.shape
            # Channels are innermost in each patch row; padding patches become 0 as in HF.
            values = pixels.float().view(count, patches, width // 3, 3)
            values = (values * self._scale - self._offset).view(count, patches, width)
            values = values * mask[..., None]
            output = self._vision(
                pixel_values=values.to(dtype),
                pixel_attention_mask=mask,
                spatial_shapes=shapes.to(self._torch_device),
            )
        return _unit_rows(pooled(output))

    def _pixels(self, chunk: Sequence[Any]) -> torch.Tensor:
        """The chunk's uint8 pixels stacked on the device (some may be there already)."""
        if not any(isinstance(item, decoding.DevicePixels) for item in chunk):
            return self._to_device(np.stack([item.pixels for item in chunk]))
        return torch.stack(
            [
                item.pixels.to(self._torch_device)
                if isinstance(item, decoding.DevicePixels)
                else torch.tensor(item.pixels, device=self._torch_device)
                for item in chunk
            ]
        )

    def _to_device(self, array: npt.NDArray[Any]) -> torch.Tensor:
        """Host array -> device tensor; on CUDA through a reused pinned buffer, asynchronously."""
        tensor = torch.from_numpy(array)
        if self._torch_device.type != "cuda":
            return tensor
        # One pinned buffer per item shape, sized for the largest batch seen; pinning is too
        # slow to repeat per batch.
        key = (array.dtype.str, *array.shape[1:])
        staging = self._staging.get(key)
        if staging is None or staging.shape[0] < len(array):
            staging = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._staging[key] = staging
        view = staging[: len(array)]
        view.copy_(tensor)
        # Safe to refill next call: this batch's result.cpu() waits for the stream.
        return view.to(self._torch_device, non_blocking=True)


class TextEncoder:
    """A loaded text tower and its tokenizer, for search queries."""

    def __init__(
        self,
        *,
        model: str,
        text: torch.nn.Module,
        tokenizer: Any,
        device: torch.device,
        dimension: int,
    ) -> None:
        self.model = model
        self.dimension = dimension
        self.device = str(device)
        self._text = text
        self._tokenizer = tokenizer
        self._torch_device = device

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> FloatArray:
        """(len(texts), dimension) float32 unit vectors, encoded as SigLIP was trained."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        tokens = self._tokenizer(
            [text.lower() for text in texts],
            padding="max_length",
            max_length=TEXT_LENGTH,
            truncation=True,
            return_tensors="pt",
        )
        # No attention mask: SigLIP's text tower was trained attending to the padding too.
        output = self._text(input_ids=tokens["input_ids"].to(self._torch_device))
        return _unit_rows(pooled(output))


def load_embedder(
    model: str, device: str = "auto", batch_size: int | None = None, *, decode: str = "auto"
) -> Embedder:
    """Load the vision tower and image recipe of `model` (hub id or directory) onto `device`,
    with the JPEG decoder ARGUS_DECODE=`decode` picks (ConfigError if it cannot run)."""
    torch_device = resolve_device(device)
    config = _load_config(model)
    family = _family(config, model)
    vision_class = (
        transformers.SiglipVisionModel if family == "fixed" else transformers.Siglip2VisionModel
    )
    recipe = _load_recipe(model, family)
    _check_recipe_fits(model, recipe, _vision_config(config))
    decoder = decoding.start(decode, torch_device, recipe)
    recipe = dataclasses.replace(recipe, decode="gpu" if decoder.name == "gpu" else "cpu")
    dtype = model_dtype(torch_device)
    vision = _load_weights(vision_class, model, dtype).to(torch_device).eval()
    dimension = int(_vision_config(config).hidden_size)
    if batch_size is None:
        batch_size = _auto_batch_size(torch_device, _vision_config(config), recipe)
    log.info(
        "loaded %s vision tower (%s, %d-d) on %s in %s, batch %d, preprocessing %s, "
        "JPEG decode on %s",
        model,
        family,
        dimension,
        torch_device,
        dtype,
        batch_size,
        recipe.id,
        decoder.name,
    )
    return Embedder(
        model=model,
        vision=vision,
        recipe=recipe,
        device=torch_device,
        batch_size=batch_size,
        dimension=dimension,
        decoder=decoder,
    )


def model_dtype(device: torch.device) -> torch.dtype:
    """DESIGN §5: bfloat16 on CUDA compute capability >= 8.0 (float32's range, so no
    overflow), float16 on older GPUs, float32 on CPU; a non-finite batch is recomputed
    in float32 (Embedder._finite_forward)."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def load_recipe(model: str) -> Recipe:
    """The image recipe of `model` alone (no weights): what its frames' pixels go through."""
    config = _load_config(model)
    recipe = _load_recipe(model, _family(config, model))
    _check_recipe_fits(model, recipe, _vision_config(config))
    return recipe


def load_text_encoder(model: str, device: str = "auto") -> TextEncoder:
    """Load the text tower and tokenizer of `model` (hub id or directory) onto `device`."""
    torch_device = resolve_device(device, warn_cpu=False)
    config = _load_config(model)
    family = _family(config, model)
    if not hasattr(config, "text_config"):
        raise errors.ConfigError(f"model {model!r} has no text tower (vision-only checkpoint)")
    text_class = (
        transformers.SiglipTextModel if family == "fixed" else transformers.Siglip2TextModel
    )
    # float32 even on CUDA: queries are few, and their vectors decide the ranking.
    text = _load_weights(text_class, model, torch.float32).to(torch_device).eval()
    try:
        with quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    except Exception as error:
        raise errors.ConfigError(
            f"model {model!r}: tokenizer not loadable: {errors.describe(error, 300)}"
        ) from None
    text_config = config.text_config
    dimension = int(getattr(text_config, "projection_size", None) or text_config.hidden_size)
    return TextEncoder(
        model=model, text=text, tokenizer=tokenizer, device=torch_device, dimension=dimension
    )


def model_dimension(model: str) -> int:
    """The embedding dimension of `model`, read from its config alone (no weights)."""
    config = _load_config(model)
    _family(config, model)
    return int(_vision_config(config).hidden_size)


def resolve_device(device: str, *, warn_cpu: bool = True) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` -> the torch device to use; ConfigError if unusable.

    `auto` on a machine with no CUDA device is no news to a text query (search, serve):
    only the image tower, which runs ~100x slower on a CPU, says so (`warn_cpu`)."""
    if device == "auto":
        if _cuda_present():
            return resolve_device("cuda")
        if warn_cpu:
            _warn_cpu_fallback()
        return torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise errors.ConfigError(
                f"ARGUS_DEVICE={device} but no usable CUDA device (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none'}); use ARGUS_DEVICE=cpu or auto"
            )
        index = torch.cuda.current_device() if device == "cuda" else _device_index(device)
        if index >= torch.cuda.device_count():
            raise errors.ConfigError(
                f"ARGUS_DEVICE={device} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return torch.device("cuda", index)
    raise errors.ConfigError(f"ARGUS_DEVICE={device!r} is not one of auto, cpu, cuda, cuda:N")


def pooled(output: Any) -> torch.Tensor:
    """The pooled embedding from a tower's output: transformers 5 returns an output object."""
    if isinstance(output, torch.Tensor):
        return output
    result = output.pooler_output
    assert isinstance(result, torch.Tensor)
    return result


def _mask(item: PreparedImage) -> npt.NDArray[np.int32]:
    if item.mask is None:
        raise ValueError("a fixed-resolution PreparedImage was given to a NaFlex embedder")
    return item.mask


def _unit_rows(vectors: torch.Tensor) -> FloatArray:
    # Normalize in float32 on the device; only the small result crosses back.
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    return np.ascontiguousarray(unit.cpu().numpy(), dtype=np.float32)


def _cuda_present() -> bool:
    """torch.cuda.is_available() without torch's own warnings: a CUDA build of torch on a
    host with no (or an old) driver warns on this probe, and `auto` did not ask for CUDA."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.cuda.is_available()


@functools.cache
def _warn_cpu_fallback() -> None:
    log.warning("ARGUS_DEVICE=auto found no CUDA device; running on CPU (much slower)")


def _device_index(device: str) -> int:
    try:
        return int(device.split(":", 1)[1])
    except ValueError:
        raise errors.ConfigError(f"ARGUS_DEVICE={device!r}: expected cuda:N") from None


def _load_config(model: str) -> Any:
    # A missing directory, or a hub id with no hub in reach and no cached copy, fails
    # here in one line (hub.ensure_loadable), never after huggingface_hub's retries.
    hub.ensure_loadable(model)
    try:
        with quiet_transformers():
            return transformers.AutoConfig.from_pretrained(model)
    except Exception as error:
        raise errors.ConfigError(
            f"model {model!r} is not loadable: {errors.describe(error, 300)}"
        ) from None


def _family(config: Any, model: str) -> Family:
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(str(model_type))
    if family is None:
        raise errors.ConfigError(
            f"model {model!r} is a {model_type!r} checkpoint; expected SigLIP or SigLIP 2"
        )
    return family


def _vision_config(config: Any) -> Any:
    return getattr(config, "vision_config", config)


def _load_weights(model_class: Any, model: str, dtype: torch.dtype) -> torch.nn.Module:
    """One tower's weights from a full or single-tower checkpoint; ConfigError if incomplete."""
    try:
        with quiet_transformers():
            tower, info = model_class.from_pretrained(model, dtype=dtype, output_loading_info=True)
    except Exception as error:
        raise errors.ConfigError(
            f"model {model!r}: weights not loadable: {errors.describe(error, 300)}"
        ) from None
    # The other tower's weights are expected leftovers; a missing key would mean random ones.
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise errors.ConfigError(
            f"model {model!r}: checkpoint lacks {len(missing)} {model_class.__name__} weights "
            f"(e.g. {missing[0]})"
        )
    assert isinstance(tower, torch.nn.Module)
    return tower


def _load_recipe(model: str, family: Family) -> Recipe:
    """Read the checkpoint's image processor settings into a Recipe we can reproduce."""
    try:
        with quiet_transformers():
            auto_processor: Any = transformers.AutoImageProcessor  # untyped upstream
            processor = auto_processor.from_pretrained(model)
    except Exception as error:
        raise errors.ConfigError(
            f"model {model!r}: image processor not loadable: {errors.describe(error, 300)}"
        ) from None
    if getattr(processor, "do_center_crop", False):
        raise errors.ConfigError(f"model {model!r}: center-crop preprocessing is not supported")
    normalize = bool(getattr(processor, "do_normalize", True))
    common: dict[str, Any] = {
        "resample": int(processor.resample if processor.resample is not None else 2),
        "rescale_factor": float(processor.rescale_factor) if processor.do_rescale else 1.0,
        "mean": _triple(processor.image_mean) if normalize else (0.0, 0.0, 0.0),
        "std": _triple(processor.image_std) if normalize else (1.0, 1.0, 1.0),
    }
    if family == "naflex":
        return Recipe(
            family=family,
            patch_size=int(processor.patch_size),
            max_num_patches=int(processor.max_num_patches),
            **common,
        )
    size = processor.size
    height, width = getattr(size, "height", None), getattr(size, "width", None)
    if not (processor.do_resize and height and width):
        raise errors.ConfigError(
            f"model {model!r}: expected a fixed height x width resize, got size={dict(size)}"
        )
    return Recipe(family=family, size=(int(height), int(width)), **common)


def _check_recipe_fits(model: str, recipe: Recipe, vision_config: Any) -> None:
    """The processor config and the model config must agree, or every forward would fail."""
    if recipe.family == "fixed":
        side = int(vision_config.image_size)
        if recipe.size != (side, side):
            raise errors.ConfigError(
                f"model {model!r}: image processor resizes to {recipe.size[0]}x{recipe.size[1]}"
                f" but the vision tower takes {side}x{side}"
            )
    elif recipe.patch_size != int(vision_config.patch_size):
        raise errors.ConfigError(
            f"model {model!r}: image processor cuts {recipe.patch_size}-pixel patches"
            f" but the vision tower takes {vision_config.patch_size}"
        )


def _triple(values: Any) -> tuple[float, float, float]:
    if isinstance(values, int | float):
        return (float(values),) * 3
    first, second, third = (float(value) for value in values)
    return first, second, third


def _auto_batch_size(device: torch.device, vision_config: Any, recipe: Recipe) -> int:
    """CPU: a fixed 32. CUDA: what half the free memory holds, by a rough per-image estimate."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _total = torch.cuda.mem_get_info(device)
    if recipe.family == "fixed":
        tokens = (recipe.size[0] // vision_config.patch_size) * (
            recipe.size[1] // vision_config.patch_size
        )
    else:
        tokens = recipe.max_num_patches
    hidden, heads = vision_config.hidden_size, vision_config.num_attention_heads
    # fp16 activations alive at once in one layer (residual, qkv, MLP, scores), x3 headroom.
    per_image = 2 * 3 * (tokens * (6 * hidden + vision_config.intermediate_size))
    per_image += 2 * 3 * heads * tokens * tokens
    fitting = max(1, int(free * 0.5) // per_image)
    return int(min(MAX_AUTO_BATCH_SIZE, 2 ** (fitting.bit_length() - 1)))


_quiet_lock = threading.RLock()  # re-entrant: a quiet block may load a checkpoint


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars while loading one checkpoint.

    Loading a tower from a full checkpoint lists the other tower's weights as "unexpected",
    which is the point, not news. The settings are process-wide, hence the lock; nested
    blocks leave the outer one's settings in place.
    """
    utils_logging: Any = transformers.utils.logging  # untyped upstream
    with _quiet_lock:
        verbosity = utils_logging.get_verbosity()
        bars = utils_logging.is_progress_bar_enabled()
        utils_logging.set_verbosity_error()
        utils_logging.disable_progress_bar()
        try:
            yield
        finally:
            utils_logging.set_verbosity(verbosity)
            if bars:
                utils_logging.enable_progress_bar()


def publish_cuda_memory(device: torch.device) -> None:
    """The device's memory on /metrics (`cuda_memory_bytes{kind}`): what torch holds
    allocated and reserved, and the device's total; read after each batch (host-side
    counters of the caching allocator, no device sync)."""
    metrics.set_cuda_memory(
        allocated=torch.cuda.memory_allocated(device),
        reserved=torch.cuda.memory_reserved(device),
        total=torch.cuda.get_device_properties(device).total_memory,
    )
