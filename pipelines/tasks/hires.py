"""The post-step every generation task shares: 高清放大 (each image upscaled by an ESRGAN model,
the original kept too), the draft mode's size (Rapid Diffusion: the short side at 256, then x4),
and which upscale a request's 高清修复 pass uses."""

from __future__ import annotations

import threading
import time

from ..errors import ParamError
from ..requests import LATENT_UPSCALER, Txt2Img, Upscale, draft_size as request_draft_size
from . import upscale
from .denoise import Generated

def draft_size(width: int, height: int, family=None) -> dict:
    """The draft's size (requests.draft_size, at the family's draft side) and its upscale as
    request fields: SD 1.x drafts at short side 256 and ×4, SDXL at 512 and ×2 (it falls apart
    below 512), so both end at the same size."""
    if family is None:
        w, h = request_draft_size(width, height)
        return {"width": w, "height": h}
    w, h = request_draft_size(width, height, family.draft_side)
    return {"width": w, "height": h, "hires_scale": family.draft_upscale}


def hires_of(store, request: Txt2Img) -> Upscale | None:
    """The upscale of the post-step (or of the hires pass), its file checked against
    models/upscalers (the draft takes the first listed one when none is named); None without a
    post-step, or for the hires pass's latent upscaler."""
    name = request.hires_upscaler
    if request.hires_pass and not request.draft and name == LATENT_UPSCALER:
        return None
    names = upscale.list_upscalers(store)
    if not name:
        if not request.draft:
            return None
        if not names:
            raise ParamError("draft_needs_upscaler")
        name = names[0]
    if name not in names:
        raise ParamError("unknown_model_name", kind="upscalers", name=str(name)[:80])
    if request.hires_pass and not request.draft:  # ESRGAN at its step, then resized to the exact size
        return Upscale(upscaler=name, scale=2 if request.hires_scale <= 2 else 4)
    return Upscale(upscaler=name, scale=int(request.hires_scale))


def upscale_results(store, result: Generated, hires: Upscale | None, cancel: threading.Event | None) -> Generated:
    """The post-step: each image's upscaled twin into ``result.upscaled``."""
    if hires is None:
        return result
    started = time.perf_counter()
    result.upscaled = [upscale.upscale(store, image, hires, cancel=cancel) for image in result.images]
    result.hires = hires
    result.upscale_seconds = time.perf_counter() - started
    return result
