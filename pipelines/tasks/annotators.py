"""Annotators (preprocessors) that turn an image into a control map: Canny edges (OpenCV) and
depth from a local transformers depth estimator in models/annotators (never downloaded)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ModelError, ParamError
from ..formats.images import to_rgb
from ..requests import as_int, in_range

log = logging.getLogger(__name__)


# What a missing depth estimator's message suggests (the one PAI's WebUI uses), and the default
# folder name looked for when the caller names none.
DEFAULT_DEPTH_ESTIMATOR = "dpt-hybrid-midas"


SUGGESTED_DEPTH_MODEL = "Intel/dpt-hybrid-midas"


ALTERNATIVE_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


# 3. Canny edges ----------------------------------------------------------------------------
def canny_map(image: Image.Image, low: int, high: int) -> Image.Image:
    """cv2.Canny on the RGB image at its own resolution (as the ControlNet annotators run it),
    as an RGB image with three equal channels: white edges on black."""
    import cv2

    low, high = as_int("low_threshold", low), as_int("high_threshold", high)
    in_range("low_threshold", low, 0, 255)
    in_range("high_threshold", high, 0, 255)
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
    return [
        name
        for name in store.folders.list_diffusers_dirs("annotators", "config.json")
        if _is_depth_model(store.folders.resolve("annotators", name))
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
    # 2. Load once; the store's cache keeps it beside the base model.
    loaded = store.cached("annotator", name, lambda: _load_depth_estimator(store, name, folder))
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
