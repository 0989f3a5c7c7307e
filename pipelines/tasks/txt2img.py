"""Text to image on the store's shared base pipeline, with the 高清放大 post-step (every image
upscaled by an ESRGAN model, the original kept too) and the draft mode (Rapid Diffusion: the
short side at 256, then x4)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from ..errors import ParamError
from ..requests import Txt2Img, Upscale
from . import upscale
from .denoise import Generated, StepHook, generate
from .preview import PreviewHook

DRAFT_SIDE = 256  # Rapid Diffusion's draft: the short side at 256, then x4 with ESRGAN


def draft_size(width: int, height: int) -> dict:
    """The draft's size: short side 256, the requested aspect ratio, multiples of 8."""
    short = min(width, height)
    w = max(8, round(width * DRAFT_SIDE / short / 8) * 8)
    h = max(8, round(height * DRAFT_SIDE / short / 8) * 8)
    return {"width": w, "height": h}


def hires_of(store, request: Txt2Img) -> Upscale | None:
    """The upscale of the post-step, its file checked against models/upscalers (the draft takes
    the first listed one when none is named); None without a post-step."""
    name = request.hires_upscaler
    names = upscale.list_upscalers(store)
    if not name:
        if not request.draft:
            return None
        if not names:
            raise ParamError("draft_needs_upscaler")
        name = names[0]
    if name not in names:
        raise ParamError("unknown_model_name", kind="upscalers", name=str(name)[:80])
    return Upscale(upscaler=name, scale=request.hires_scale)


def upscale_results(store, result: Generated, hires: Upscale | None, cancel: threading.Event | None) -> Generated:
    """The post-step: each image's upscaled twin into ``result.upscaled``."""
    if hires is None:
        return result
    started = time.perf_counter()
    result.upscaled = [upscale.upscale(store, image, hires, cancel=cancel) for image in result.images]
    result.hires = hires
    result.upscale_seconds = time.perf_counter() - started
    return result


def run(
    store,
    request: Txt2Img,
    cancel: threading.Event | None = None,
    on_step: StepHook | None = None,
    on_preview: PreviewHook | None = None,
) -> Generated:
    hires = hires_of(store, request)
    if request.draft:
        request = replace(request, **draft_size(request.width, request.height))
    result = generate(store, request, cancel=cancel, on_step=on_step, on_preview=on_preview)
    return upscale_results(store, result, hires, cancel)
