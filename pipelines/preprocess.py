"""Control-image preparation: reading uploads safely, fitting them to the output size, and the
two annotators ControlNet needs (Canny edges, depth).

Uploads come from browsers and API clients, so ``load_image`` trusts nothing: the pixel count is
checked from the header before anything is decoded (a 100-byte PNG can declare 12000x12000),
EXIF rotation is applied the way phones expect, and every mode (CMYK, palette, alpha, 16-bit
grey) becomes plain 8-bit RGB. Depth estimation uses transformers' own depth models from
``models/annotators/<name>``, local files only: the app never downloads or waits on a network
for an annotator, it tells the user which folder to fill instead.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ModelError, ParamError
from .params import _as_int, _in_range

log = logging.getLogger(__name__)

# Largest upload accepted (40 megapixels: a 7700x5200 photo). PIL's own bomb check uses the same
# limit, and its warning is turned into an error inside load_image.
MAX_INPUT_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS

RESIZE_MODES: tuple[str, ...] = ("crop", "fit", "stretch")

# What a missing depth estimator's message suggests (the one PAI's WebUI uses), and the default
# folder name looked for when the caller names none.
DEFAULT_DEPTH_ESTIMATOR = "dpt-hybrid-midas"
SUGGESTED_DEPTH_MODEL = "Intel/dpt-hybrid-midas"
ALTERNATIVE_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


# 1. Reading uploads -----------------------------------------------------------------------
def load_image(data) -> Image.Image:
    """An 8-bit RGB image from a PIL image, a file path or bytes, upright per its EXIF tag.

    Raises ParamError ``image_unreadable`` (not an image, corrupt, truncated) or
    ``image_too_large`` (over MAX_INPUT_PIXELS, refused from the header before decoding).
    """
    return to_rgb(open_upload(data))


def open_upload(data) -> Image.Image:
    """A decoded, upright image in its own mode (alpha, 16-bit kept) after the same checks as
    ``load_image``: for callers that keep alpha, like upscaling."""
    if isinstance(data, Image.Image):
        _check_pixels(*data.size)
        return ImageOps.exif_transpose(data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(data))
    elif isinstance(data, (str, Path)):
        source = Path(data)
        if not source.is_file():
            raise ParamError("image_unreadable")
    else:
        raise ParamError("image_unreadable")
    with _open_checked(source) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
        return upright if upright is not image else image.copy()


def check_upload(path) -> None:
    """Refuse an image file from its header alone: not an image (``image_unreadable``) or over
    MAX_INPUT_PIXELS (``image_too_large``). For the UI's image inputs, which must be checked
    before Gradio's own preprocessing decodes or converts the pixels."""
    with _open_checked(Path(path)):
        pass


@contextmanager
def _open_checked(source):
    """``Image.open`` (header only) with the pixel cap checked before anything is decoded;
    PIL's errors and decompression-bomb warnings, also from the caller's block, become
    ``image_unreadable`` / ``image_too_large``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as image:
                _check_pixels(*image.size)
                yield image
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ParamError("image_too_large", megapixels=MAX_INPUT_PIXELS // 1_000_000) from None
        except ParamError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            log.info("refused an unreadable image: %s", exc)
            raise ParamError("image_unreadable") from None


def _check_pixels(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ParamError("image_unreadable")
    if width * height > MAX_INPUT_PIXELS:
        raise ParamError("image_too_large", megapixels=MAX_INPUT_PIXELS // 1_000_000)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha composited on white, 16/32-bit grey scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (PNG, TIFF): full range 0..65535 maps to 0..255.
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(values / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        grey = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError):
        raise ParamError("image_unreadable") from None


# 2. Fitting to the output size --------------------------------------------------------------
def fit_to(image: Image.Image, width: int, height: int, mode: str = "crop") -> Image.Image:
    """``image`` at exactly width x height.

    ``crop`` scales to cover and cuts the overflow evenly (A1111's "Crop and Resize"), ``fit``
    scales to fit and pads with black (no edges, farthest depth), ``stretch`` ignores the aspect.
    """
    if mode not in RESIZE_MODES:
        raise ParamError("unknown_resize_mode", value=str(mode)[:40])
    width, height = _as_int("width", width), _as_int("height", height)
    _in_range("width", width, 1, 16384)
    _in_range("height", height, 1, 16384)
    size = (width, height)
    if image.size == size:
        return image
    if mode == "crop":
        return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)
    if mode == "fit":
        return ImageOps.pad(image, size, method=Image.Resampling.LANCZOS, color=(0, 0, 0))
    return image.resize(size, Image.Resampling.LANCZOS)


# 3. Canny edges ----------------------------------------------------------------------------
def canny_map(image: Image.Image, low: int, high: int) -> Image.Image:
    """cv2.Canny on the RGB image at its own resolution (as the ControlNet annotators run it),
    as an RGB image with three equal channels: white edges on black."""
    import cv2

    low, high = _as_int("low_threshold", low), _as_int("high_threshold", high)
    _in_range("low_threshold", low, 0, 255)
    _in_range("high_threshold", high, 0, 255)
    if low > high:
        raise ParamError("canny_thresholds_order", low=low, high=high)
    edges = cv2.Canny(np.asarray(to_rgb(image)), low, high)
    return Image.fromarray(edges, mode="L").convert("RGB")


# 4. Depth ----------------------------------------------------------------------------------
def _depth_model_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES

    return set(MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES)


def _is_depth_model(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") in _depth_model_types()


def list_depth_estimators(store) -> list[str]:
    """Folders under models/annotators holding a transformers depth model (DPT, Depth Anything,
    GLPN, ZoeDepth, ...), by their relative names."""
    root = store.folders.folder("annotators")
    return [
        name
        for name in store.folders.list_diffusers_dirs("annotators", "config.json")
        if _is_depth_model(root / name)
    ]


@dataclass(frozen=True)
class DepthEstimator:
    """A depth model with its image processor, cached together in the store."""

    model: object
    processor: object

    @property
    def nbytes(self) -> int:  # what the store's cache budget counts
        return sum(t.numel() * t.element_size() for t in (*self.model.parameters(), *self.model.buffers()))


def _load_depth_estimator(store, name: str, folder: Path) -> DepthEstimator:
    """The model and image processor of a local folder; never reaches for the network."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    if not _is_depth_model(folder):
        raise ModelError("depth_estimator_load_failed", name=name)
    try:
        # backend="pil": the processors' torchvision backend is not installed, and the PIL one
        # computes the same resize and normalisation.
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
        model = AutoModelForDepthEstimation.from_pretrained(
            folder, local_files_only=True, dtype=store.plan.dtype
        )
    except Exception as exc:  # a broken annotator is a user-facing error, never a crash
        log.exception("loading depth estimator %s failed", name)
        raise ModelError("depth_estimator_load_failed", name=name) from exc
    model.to(store.plan.device).eval()
    log.info("loaded depth estimator %s (%s)", name, type(model).__name__)
    return DepthEstimator(model, processor)


def depth_map(store, image: Image.Image, estimator: str) -> Image.Image:
    """Relative depth of ``image`` (near is white) as 0..255 RGB at the image's own resolution.

    ``estimator`` names a folder under models/annotators (empty means DEFAULT_DEPTH_ESTIMATOR);
    a missing one raises ModelError ``depth_estimator_missing`` naming the folder to fill.
    """
    import torch

    name = estimator or DEFAULT_DEPTH_ESTIMATOR
    # 1. Find the folder; a name that escapes models/annotators is refused by resolve().
    try:
        folder = store.folders.resolve("annotators", name)
    except ParamError as exc:
        if exc.code != "unknown_model_name":
            raise
        where = str(store.folders.folder("annotators") / name)
        raise ModelError("depth_estimator_missing", name=name, folder=where, suggestion=SUGGESTED_DEPTH_MODEL, alternative=ALTERNATIVE_DEPTH_MODEL) from None
    rgb = to_rgb(image)
    with store.lock:
        # 2. Load once; the store's cache keeps it beside the base model.
        loaded = store.cache.get("annotator", name, lambda: _load_depth_estimator(store, name, folder))
        model = loaded.model
        # 3. Predict at the model's resolution, then back to the input's.
        inputs = loaded.processor(images=rgb, return_tensors="pt")
        pixels = inputs["pixel_values"].to(device=model.device, dtype=model.dtype)
        with torch.no_grad():
            predicted = model(pixel_values=pixels).predicted_depth
        depth = torch.nn.functional.interpolate(
            predicted.float().unsqueeze(1), size=(rgb.height, rgb.width), mode="bicubic", align_corners=False
        )[0, 0]
    # 4. Normalise to the full 0..255 range (a flat prediction becomes black).
    depth = depth.cpu().numpy().astype(np.float64)
    low, high = float(depth.min()), float(depth.max())
    scaled = (depth - low) / (high - low) * 255.0 if high > low else np.zeros_like(depth)
    grey = np.clip(scaled, 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")
