"""Text to image on the store's shared base pipeline, with the 高清放大 post-step, the draft
mode (tasks/hires.py) and A1111's 高清修复 pass (tasks/edit.py). On a dedicated inpainting
model it paints a blank, fully masked canvas, as A1111 does."""

from __future__ import annotations

import threading
from dataclasses import replace

from ..requests import Txt2Img
from . import edit
from .denoise import Generated, StepHook, blank_canvas, generate, is_inpainting_model
from .hires import draft_size, hires_of, upscale_results
from .preview import PreviewHook
from .registry import task


@task("txt2img")
def run(
    store,
    request: Txt2Img,
    cancel: threading.Event | None = None,
    on_step: StepHook | None = None,
    on_preview: PreviewHook | None = None,
) -> Generated:

    if request.draft:
        request = replace(request, **draft_size(request.width, request.height, store.family))
    hires = hires_of(store, request)
    if request.hires_pass:  # 高清修复: upscale, then a second denoise (only the refined image is kept)
        return edit.hires_fix(store, request, hires, cancel=cancel, on_step=on_step, on_preview=on_preview)
    blank = {"cls": store.family.pipeline_class("inpaint"), "call_kwargs": blank_canvas(request)} if is_inpainting_model(store) else {}
    result = generate(store, request, cancel=cancel, on_step=on_step, on_preview=on_preview, **blank)
    return upscale_results(store, result, hires, cancel)
