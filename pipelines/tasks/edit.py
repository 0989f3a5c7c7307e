"""Image editing on the store's shared base: 图生图 (img2img), 局部重绘 (inpainting), 扩图
(outpainting), and the second pass of 高清修复 (hires fix).

Every pipeline here comes from ``from_pipe`` on the base (diffusers' img2img, inpaint and their
ControlNet variants), so the base's own U-Net, VAE and text encoder do the work. Inpainting
works with an ordinary SD 1.x model (4-channel U-Net: diffusers keeps the unmasked latents on
the input's own, re-noised each step) and with a dedicated inpainting model (9-channel U-Net:
it also sees the mask and the masked image). Either way the result is pasted back through the
blurred mask, so every pixel outside it is the input's own, exactly.

Denoising strength 0 runs no U-Net step: the image comes back through the VAE.
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from ..formats.images import fit_to, load_image
from ..requests import (
    LATENT_UPSCALER,
    Control,
    MAX_JOB_PIXELS,
    MAX_SIDE,
    MIN_SIDE,
    Img2Img,
    Inpaint,
    Outpaint,
    Txt2Img,
    Upscale,
    schedule,
)
from . import controlnet, masks, upscale
from .denoise import (
    Generated,
    StepHook,
    blank_canvas,
    check_cancel,
    decode_latents,
    denoise,
    generators,
    is_inpainting_model,
    offset_steps,
)
from .hires import hires_of
from .registry import task


# 1. Shared pieces ----------------------------------------------------------------------------
def working_size(width: int, height: int, images: int) -> tuple[int, int]:
    """A picture's own size as a size the U-Net can work at: multiples of 8, scaled down (aspect
    kept) to fit the side and per-job pixel limits."""
    scale = min(1.0, MAX_SIDE / max(width, height), (MAX_JOB_PIXELS / (width * height * images)) ** 0.5)
    return max(MIN_SIDE, int(width * scale) // 8 * 8), max(MIN_SIDE, int(height * scale) // 8 * 8)


def encode(pipe, images: list[Image.Image]) -> torch.Tensor:
    """Images to the denoiser's (shifted, scaled) latents, deterministically (the latent mean)."""
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(images).to(device=vae.device, dtype=vae.dtype)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()
    return (latents - (vae.config.get("shift_factor") or 0.0)) * vae.config.scaling_factor


def round_trip(store, images: list[Image.Image], count: int) -> list[Image.Image]:
    """Strength 0: each image through the VAE and back, ``count`` times; no U-Net step."""
    pipe = store.base()
    latents = encode(pipe, images)
    if latents.shape[0] != count:
        latents = latents.repeat(count // latents.shape[0], 1, 1, 1)
    return decode_latents(pipe, latents)


@dataclass
class Pass:
    """One img2img-style denoise: the pipeline's request (the working size, the schedule's
    length as its steps), the U-Net steps that really run, the strength, and the request as the
    user asked it at the working size (what results report)."""

    request: Txt2Img
    steps: int
    strength: float
    asked: Txt2Img


def plan_pass(base: Txt2Img, strength: float, width: int, height: int, steps: int | None = None) -> Pass:
    asked = replace(base, width=width, height=height, num_inference_steps=steps or base.num_inference_steps)
    length, runs = schedule(asked.num_inference_steps, strength)
    return Pass(replace(asked, num_inference_steps=length), runs, strength, asked)


def _guidance(store, units, width: int, height: int, resize_mode: str, cancel, steps: int | None = None):
    """The ControlNets of an edit (their names were checked before any image was decoded)."""
    return controlnet.guidance(store, units, width, height, resize_mode, cancel, steps) if units else None


# 2. Image to image ------------------------------------------------------------------------
@task("img2img")
def img2img(store, request: Img2Img, cancel: threading.Event | None = None, on_step: StepHook | None = None,
            on_preview=None) -> Generated:
    """The input fitted to the request's size, denoised from ``strength`` (ControlNets optional)."""

    base = request.base
    if request.units:
        controlnet.check_names(store, request.units)
    # 1. The input at the output size.
    source = load_image(request.image)
    init = fit_to(source, base.width, base.height, request.resize_mode)
    work = plan_pass(base, request.strength, base.width, base.height)
    if is_inpainting_model(store):  # a 9-channel U-Net: repaint everything, from the input
        mask = Image.new("L", init.size, 255)
        return _inpaint_at(store, work, init, mask, "original", request.units, request.resize_mode, cancel,
                           on_step, on_preview)
    guide = _guidance(store, request.units, base.width, base.height, request.resize_mode, cancel)
    if work.steps == 0:
        return _unchanged(store, work.asked, [init], guide)
    # 2. Denoise from the input; the ControlNet variant when units guide it.
    cls, components, kwargs = store.family.pipeline_class("img2img"), {}, {}
    if guide is not None:
        cls, components = controlnet.pipeline_class(store, guide, "controlnet_img2img"), {"controlnet": guide.controlnet}
        kwargs = {"control_image": guide.images, **guide.kwargs}
    return _run(store, work, cls, components, {"image": init, "strength": work.strength, **kwargs}, guide,
                cancel, on_step, on_preview)


def _unchanged(store, params: Txt2Img, images: list[Image.Image], guide) -> Generated:
    started = time.perf_counter()
    result = Generated(images=round_trip(store, images, params.num_images_per_prompt), seeds=params.seeds(),
                       seconds=time.perf_counter() - started, request=params, notices={"unet_steps": 0})
    result.maps = guide.maps if guide else []
    return result


def _run(store, work: Pass, cls, components, kwargs, guide, cancel, on_step, on_preview) -> Generated:
    started = time.perf_counter()
    notices: dict = {"unet_steps": work.steps}
    pipe, latents = denoise(store, work.request, cls, components, kwargs, cancel, on_step, on_preview,
                            steps=work.steps, notices=notices)
    result = Generated(images=decode_latents(pipe, latents, cancel), seeds=work.asked.seeds(),
                       seconds=time.perf_counter() - started, request=work.asked, notices=notices)
    result.maps = guide.maps if guide else []
    return result


# 3. Inpainting ----------------------------------------------------------------------------
@task("inpaint")
def inpaint(store, request: Inpaint, cancel: threading.Event | None = None, on_step: StepHook | None = None,
            on_preview=None) -> Generated:
    """Repaint where the mask is white; every pixel beyond the blurred mask is the input's own."""
    edit, base = request.edit, request.edit.base
    if edit.units:
        controlnet.check_names(store, edit.units)
    # 1. The input at its own size, and its mask.
    source = load_image(edit.image)
    mask = masks.read_mask(request.mask, source.size, request.invert)
    soft = masks.blur(mask, request.mask_blur)
    # 2. Where the work happens: the whole picture at its own size, or the mask's padded box at
    #    the request's size (then scaled back into place).
    if request.full_res:
        box = masks.crop_box(soft, request.padding, base.width / base.height)
        work_image = source.crop(box).resize((base.width, base.height), Image.Resampling.LANCZOS)
        work_mask = soft.crop(box).resize((base.width, base.height), Image.Resampling.BILINEAR)
    else:
        box = None
        size = working_size(*source.size, base.num_images_per_prompt)
        work_image = source.resize(size, Image.Resampling.LANCZOS) if size != source.size else source
        work_mask = soft.resize(size, Image.Resampling.BILINEAR) if size != source.size else soft
    work = plan_pass(base, edit.strength, *work_image.size)
    result = _inpaint_at(store, work, work_image, work_mask, request.fill, edit.units, edit.resize_mode, cancel,
                         on_step, on_preview)
    # 3. Back into the input through the blurred mask.
    result.images = [masks.paste_back(source, image, soft, box) for image in result.images]
    result.inputs = [(source, "init"), (mask, "mask")]
    if box is not None:
        result.notices["inpaint_box"] = list(box)
    return result


def _inpaint_at(store, work: Pass, image: Image.Image, mask: Image.Image, fill: str, units, resize_mode: str,
                cancel, on_step, on_preview) -> Generated:
    """Inpaint ``image`` (already at the working size) where ``mask`` is at least half white."""

    width, height = image.size
    guide = _guidance(store, units, width, height, resize_mode, cancel, work.request.num_inference_steps)
    if work.steps == 0:
        return _unchanged(store, work.asked, [image], guide)
    # 1. What the masked area starts from (A1111's "Masked content").
    start = masks.fill_masked(image, mask) if fill == "fill" else image
    init = start
    if fill in ("latent_noise", "latent_nothing"):
        init = _latent_fill(store, start, mask, fill, work.request)
    # 2. Denoise; the ControlNet variant when units guide it.
    cls, components, kwargs = store.family.pipeline_class("inpaint"), {}, {}
    if guide is not None:
        cls, components = controlnet.pipeline_class(store, guide, "controlnet_inpaint"), {"controlnet": guide.controlnet}
        kwargs = {"control_image": guide.images, **guide.kwargs}
    call = {"image": init, "mask_image": mask, "strength": work.strength, **kwargs}
    if not isinstance(init, Image.Image):  # latents: the 9-channel U-Net still sees the image itself
        call["masked_image_latents"] = _masked_latents(store, start, mask)
    full = "strength" not in inspect.signature(cls.__call__).parameters
    if full:  # Z-Image's ControlNet inpainting always repaints the masked area from noise
        call.pop("strength")
    result = _run(store, work, cls, components, call, guide, cancel, on_step, on_preview)
    if full and work.strength < 1:
        result.notices["full_strength"] = store.family.label
    return result


def _latent_fill(store, image: Image.Image, mask: Image.Image, fill: str, params: Txt2Img) -> torch.Tensor:
    """The input's latents with the masked area replaced by seeded noise or by zeros."""
    pipe = store.base()
    latents = encode(pipe, [image])
    small = mask.resize((latents.shape[-1], latents.shape[-2]), Image.Resampling.BILINEAR)
    weight = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).to(latents)
    if fill == "latent_noise":
        noise = torch.randn(latents.shape, generator=generators(params.seed, 1)[0]).to(latents)
        replacement = noise
    else:
        replacement = torch.zeros_like(latents)
    return latents * (1 - weight) + replacement * weight


def _masked_latents(store, image: Image.Image, mask: Image.Image) -> torch.Tensor:
    """The masked image (masked area black) as latents, what a 9-channel U-Net is shown."""
    keep = (np.asarray(mask) < masks.MASKED)[..., None]
    masked = Image.fromarray((np.asarray(image) * keep).astype(np.uint8), mode="RGB")
    return encode(store.base(), [masked])


# 4. Outpainting ---------------------------------------------------------------------------
@task("outpaint")
def outpaint(store, request: Outpaint, cancel: threading.Event | None = None, on_step: StepHook | None = None,
             on_preview=None) -> Generated:
    """The canvas grown by the requested pixels, the new area inpainted to continue the picture.
    The original pixels are kept exactly (unless the canvas had to be scaled down to fit)."""
    edit, base = request.edit, request.edit.base
    if edit.units:
        controlnet.check_names(store, edit.units)
    source = load_image(edit.image)
    left, right, up, down = request.left, request.right, request.up, request.down
    # 1. The canvas: at least 64 and multiples of 8 (the rest goes to the right and bottom),
    #    scaled to fit.
    right += max(0, MIN_SIDE - (source.width + left + right))
    down += max(0, MIN_SIDE - (source.height + up + down))
    width, height = source.width + left + right, source.height + up + down
    right += -width % 8
    down += -height % 8
    width, height = source.width + left + right, source.height + up + down
    fitted = working_size(width, height, base.num_images_per_prompt)
    notices = {}
    if fitted != (width, height):
        factor = fitted[0] / width
        source = source.resize((max(1, round(source.width * factor)), max(1, round(source.height * factor))),
                               Image.Resampling.LANCZOS)
        width, height = fitted
        left = min(round(left * factor), width - source.width)
        up = min(round(up * factor), height - source.height)
        right, down = width - left - source.width, height - up - source.height
        notices["outpaint_scaled"] = round(factor, 3)
    canvas = Image.new("RGB", (width, height), (127, 127, 127))
    canvas.paste(source, (left, up))
    mask = Image.new("L", (width, height), 255)
    mask.paste(0, (left, up, left + source.width, up + source.height))
    # 2. Inpaint the new area at the canvas size; paste the original back over it, exactly.
    work = plan_pass(base, edit.strength, width, height)
    result = _inpaint_at(store, work, canvas, mask, request.fill, edit.units, edit.resize_mode, cancel, on_step,
                         on_preview)
    result.images = [Image.composite(image, canvas, mask) for image in result.images]
    result.notices.update(notices, outpaint=[left, right, up, down])
    result.inputs = [(source, "init")]
    return result


# 5. The hires pass ------------------------------------------------------------------------
def hires_fix(store, request: Txt2Img, up: Upscale | None, cancel: threading.Event | None = None,
              on_step: StepHook | None = None, on_preview=None, control: Control | None = None) -> Generated:
    """A1111's 高清修复: generate, upscale (``up``: an ESRGAN file; None: the latents), denoise
    again at the larger size from ``hires_strength`` on the same seed. ``request`` is the first
    pass's (a draft's own size). ``control``: ControlNets guide both passes, their maps fitted
    to each pass's size."""

    started = time.perf_counter()
    width, height = request.hires_size()
    second = plan_pass(request, request.hires_strength, width, height, request.hires_steps or None)
    total = request.num_inference_steps + second.steps
    inpainting = is_inpainting_model(store)
    units, resize_mode = (control.units, control.resize_mode) if control else ((), "crop")
    guide = _guidance(store, units, request.width, request.height, resize_mode, cancel, request.num_inference_steps)
    if guide is not None:  # the second pass's pipeline, before the first pass runs (a family may lack it)
        controlnet.pipeline_class(store, guide, "controlnet_img2img")
    # 1. The first pass, to latents (an inpainting model paints a blank, fully masked canvas).
    notices: dict = {}
    blank = blank_canvas(request) if inpainting else {}
    if guide is None:
        first = {"cls": store.family.pipeline_class("inpaint"), "call_kwargs": blank} if inpainting else {}
    else:
        cls = controlnet.pipeline_class(store, guide, "controlnet_inpaint" if inpainting else "controlnet")
        images = {"control_image" if inpainting else controlnet.image_argument(guide): guide.images}
        first = {"cls": cls, "components": {"controlnet": guide.controlnet},
                 "call_kwargs": {**blank, **images, **guide.kwargs}}
    pipe, latents = denoise(store, request, cancel=cancel, on_step=offset_steps(on_step, 0, total),
                            on_preview=on_preview, notices=notices, **first)
    # 2. Upscale: the latents themselves, or the decoded images with ESRGAN.
    if up is None:
        init = torch.nn.functional.interpolate(latents, size=(height // 8, width // 8), mode="bilinear",
                                               align_corners=False)
    else:
        init = [upscale.upscale(store, image, up, cancel=cancel).resize((width, height), Image.Resampling.LANCZOS)
                for image in decode_latents(pipe, latents)]
    check_cancel(cancel)
    # 3. The second pass (none at strength 0: the upscale as it is).
    on_second = offset_steps(on_step, request.num_inference_steps, total)
    if second.steps == 0:
        images = decode_latents(pipe, init) if up is None else init
    elif inpainting:  # the 9-channel U-Net repaints each upscaled image, all of it masked
        pictures = decode_latents(pipe, init) if up is None else init
        white = Image.new("L", (width, height), 255)
        images = []
        for i, picture in enumerate(pictures):
            one = replace(second, request=replace(second.request, num_images_per_prompt=1, seed=request.seed + i))
            images += _inpaint_at(store, one, picture, white, "original", units, resize_mode, cancel, on_second,
                                  on_preview).images
    else:
        cls, components, extra = store.family.pipeline_class("img2img"), {}, {}
        if guide is not None:
            cls, components = controlnet.pipeline_class(store, guide, "controlnet_img2img"), {"controlnet": guide.controlnet}
            extra = {"control_image": controlnet.refit(guide, width, height, resize_mode), **guide.kwargs}
        pipe, refined = denoise(store, second.request, cls, components,
                                {"image": init, "strength": second.strength, **extra}, cancel=cancel,
                                on_step=on_second, on_preview=on_preview, steps=second.steps, notices=notices)
        images = decode_latents(pipe, refined)
    notices["hires_size"] = [width, height]
    notices["unet_steps"] = total
    result = Generated(images=images, seeds=request.seeds(), seconds=time.perf_counter() - started,
                       request=request, notices=notices)
    result.hires_pass = up.upscaler if up is not None else LATENT_UPSCALER
    result.maps = guide.maps if guide else []
    return result


@task("control_hires")
def control_hires(store, request: Control, cancel: threading.Event | None = None, on_step: StepHook | None = None,
                  on_preview=None) -> Generated:
    """ControlNet text to image with the 高清修复 pass (names checked before any image is decoded)."""
    controlnet.check_names(store, request.units)
    up = hires_of(store, request.base)
    result = hires_fix(store, request.base, up, cancel=cancel, on_step=on_step, on_preview=on_preview,
                       control=request)
    result.notices["controlnets"] = [unit.model for unit in request.units]
    return result
