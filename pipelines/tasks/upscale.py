"""Super-resolution with ESRGAN-family models from ``models/upscalers``.

The image is cut into tiles with overlapping padding, each tile runs through the model on the
store's device and its padded border is thrown away before stitching (Real-ESRGAN's
``tile_process``), so memory is bounded by the tile size, not the image size. When the device
runs out of memory the tile size halves and the job restarts (ComfyUI does the same).

- Requested scale above the model's: the model runs again on its own output (a x2 model
  reaches x4 in two passes). Below: one pass, then a Lanczos resize (x2 from a x4 model).
- Colour: grayscale, palette and 16-bit images are converted to 8-bit RGB for the model; the
  result is RGB, or RGBA when the input had alpha. The alpha channel is resized with Lanczos,
  not run through the model: it costs nothing extra and cannot pick up colour artefacts.
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np
import torch
from PIL import Image

from ..errors import DanqingError, ParamError
from ..formats.esrgan import load_upscaler_file
from ..formats.images import MAX_UPSCALE_INPUT_PIXELS, to_rgb8
from ..requests import MIN_TILE, Upscale
from ..store.devices import free_memory, is_oom
from .denoise import StepHook, check_cancel

log = logging.getLogger(__name__)



def list_upscalers(store) -> list[str]:
    """Upscaler files under models/upscalers, as names relative to that folder."""
    return store.folders.list_files("upscalers")


def load_upscaler(store, name: str):
    """The model in ``name``, loaded once into the store's cache on the store's device."""
    device = store.plan.device
    # fp16 where the store runs fp16 (CUDA); fp32 on CPU, where half precision is slow.
    dtype = store.plan.dtype if device.type != "cpu" else torch.float32

    def load():
        path = store.folders.resolve("upscalers", name)
        if not path.is_file() or path.suffix.lower() not in (".pth", ".safetensors"):
            raise ParamError("unknown_model_name", kind="upscalers", name=name[:80])
        return load_upscaler_file(path, name, device, dtype)

    return store.cached("upscaler", name, load)


def upscale(
    store,
    image: Image.Image,
    params: Upscale,
    cancel: threading.Event | None = None,
    on_step: StepHook | None = None,
) -> Image.Image:
    """``image`` enlarged ``params.scale`` times by ``params.upscaler``; RGB or RGBA."""
    # 1. Refuse bad requests before any work.
    if not isinstance(image, Image.Image):
        raise ParamError("upscale_no_image")
    width, height = image.size
    if width * height > MAX_UPSCALE_INPUT_PIXELS:
        raise ParamError("upscale_image_too_large", width=width, height=height, limit=MAX_UPSCALE_INPUT_PIXELS)
    check_cancel(cancel)
    target = (width * params.scale, height * params.scale)

    # 2. 8-bit RGB for the model; alpha kept aside.
    rgb, alpha = to_rgb8(image)

    model = load_upscaler(store, params.upscaler)
    # 3. Passes: repeat the model until it reaches the requested scale.
    passes = 1
    while model.scale > 1 and model.scale**passes < params.scale:
        passes += 1
    progress = _Progress(on_step, [(height * model.scale**i, width * model.scale**i) for i in range(passes)])
    for index in range(passes):
        rgb = _run_with_oom_fallback(store, model, rgb, params, progress, index, cancel)

    # 4. Exact size: Lanczos down from an overshoot (x2 from a x4 model) or up from a x1 model.
    result = Image.fromarray(rgb, "RGB")
    if result.size != target:
        result = result.resize(target, Image.Resampling.LANCZOS)
    if alpha is not None:
        result.putalpha(alpha.resize(target, Image.Resampling.LANCZOS))
    return result


class _Progress:
    """Counts tiles over all passes for ``on_step(done, total)``."""

    def __init__(self, on_step: StepHook | None, pass_sizes: list[tuple[int, int]]) -> None:
        self.on_step = on_step
        self.pass_sizes = pass_sizes
        self.done_before = 0  # tiles of finished passes
        self.done = 0
        self.total = 0

    def start_pass(self, index: int, tile: int) -> None:
        self.done = self.done_before
        self.total = self.done_before + sum(_tile_count(h, w, tile) for h, w in self.pass_sizes[index:])

    def tile_done(self) -> None:
        self.done += 1
        if self.on_step is not None:
            self.on_step(self.done, self.total)

    def end_pass(self) -> None:
        self.done_before = self.done


def _tile_count(height: int, width: int, tile: int) -> int:
    if tile <= 0:
        return 1
    return math.ceil(height / tile) * math.ceil(width / tile)


def _run_with_oom_fallback(store, model, rgb: np.ndarray, params: Upscale, progress: _Progress, index: int, cancel) -> np.ndarray:
    """One model pass; on out-of-memory, halve the tile and start the pass again."""
    tile = params.tile  # 0: the whole image as one tile
    while True:
        progress.start_pass(index, tile)
        try:
            out = _run_tiles(model, rgb, tile, params.tile_overlap, cancel, progress)
            progress.end_pass()
            return out
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(exc):
                raise
        # Out of the except block, so the failed tile's tensors are already freed.
        free_memory(store.plan.device)
        tile = tile or max(rgb.shape[:2])
        if tile <= MIN_TILE:
            raise DanqingError("out_of_memory", tile=tile)
        tile = max(MIN_TILE, tile // 2)
        log.warning("upscale ran out of memory; retrying with %dpx tiles", tile)


def _run_tiles(model, rgb: np.ndarray, tile: int, overlap: int, cancel, progress: _Progress) -> np.ndarray:
    """Real-ESRGAN's tiling: each tile reads ``overlap`` extra pixels on every side it has a
    neighbour, and only its own area of the output is kept."""
    scale, multiple = model.scale, model.multiple
    height, width = rgb.shape[:2]
    # 1. Pixel-unshuffle models need even (x2) sides and tile offsets: pad the image, align
    #    tile and overlap, so every tile sees the same pixel grid as the whole image would.
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    full_h, full_w = rgb.shape[:2]
    tile = _round_up(min(tile or max(full_h, full_w), max(full_h, full_w)), multiple)
    overlap = _round_up(overlap, multiple)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    out = np.empty((full_h * scale, full_w * scale, 3), dtype=np.uint8)
    # 2. Tile by tile: cancel check, padded crop, model, keep the centre.
    for y0 in range(0, full_h, tile):
        for x0 in range(0, full_w, tile):
            check_cancel(cancel)
            y1, x1 = min(y0 + tile, full_h), min(x0 + tile, full_w)
            py0, px0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
            py1, px1 = min(y1 + overlap, full_h), min(x1 + overlap, full_w)
            patch = torch.from_numpy(np.array(rgb[py0:py1, px0:px1]))  # a writable copy of the tile
            batch = patch.to(device).permute(2, 0, 1).unsqueeze(0).to(dtype) / 255.0
            with torch.inference_mode():
                result = model(batch)
                if dtype != torch.float32 and not torch.isfinite(result).all():
                    # fp16 overflow: upcast the cached model once and redo the tile in fp32.
                    log.warning("upscaler produced NaN in %s; upcasting it to fp32", dtype)
                    model.float()
                    dtype = torch.float32
                    result = model(batch.float())
                if not torch.isfinite(result).all():
                    raise DanqingError("upscale_nan_output")
                oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
                kept = result[0, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale]
                pixels = (kept.float().clamp_(0, 1) * 255.0).round_().to(torch.uint8)
            out[y0 * scale : y1 * scale, x0 * scale : x1 * scale] = pixels.permute(1, 2, 0).cpu().numpy()
            del batch, result, kept, pixels
            progress.tile_done()
    # 3. Drop the alignment padding.
    return out[: height * scale, : width * scale]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
