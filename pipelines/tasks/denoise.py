"""The denoise-and-decode loop every generation task shares: the job's pipeline (shared
modules, its own scheduler, the job's LoRAs), prompt encoding (chunked when long), seeded
generators, the step callback (progress, stop, live previews) and VAE decoding with the fp32
fallback when fp16 decoding overflows to NaN.

Tasks run inside the job context (pipelines/jobs.py), which holds the GPU lock.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from ..errors import DanqingError, JobCancelled
from ..requests import Txt2Img, Upscale
from .deepcache import deep_cache
from .lora import apply_loras
from .preview import PreviewHook, Previewer, preview_decoder
from ..formats.prompt_weights import parse as parse_weights, plain_text
from .prompts import encode_long, used_embeddings
from .schedulers import make_scheduler, step_eta

log = logging.getLogger(__name__)

StepHook = Callable[[int, int], None]
LatentHook = Callable[[int, int, torch.Tensor], None]


def generators(seed: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image (seed, seed+1, ...): each image can be remade on its own,
    and CPU noise makes a seed mean the same picture on any device."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def step_callback(total: int, cancel: threading.Event | None, on_step: StepHook | None,
                  on_latents: LatentHook | None = None):
    """A ``callback_on_step_end`` that reports progress (and the latents, for live previews)
    and stops the job within one step."""

    def callback(pipe, step: int, timestep, kwargs: dict) -> dict:
        if on_step is not None:
            on_step(step + 1, total)
        if on_latents is not None and "latents" in kwargs:
            on_latents(step + 1, total, kwargs["latents"])
        if cancel is not None and cancel.is_set():
            raise JobCancelled()
        return kwargs

    return callback


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise JobCancelled()


LARGE_DECODE = 1024 * 1024  # pixels of one image from which a batch is decoded one by one


def decode_latents(pipe, latents: torch.Tensor, cancel: threading.Event | None = None):
    """Latents (as the pipeline returns them with ``output_type="latent"``) to PIL images.

    fp16 VAEs can overflow to NaN on some images; then the shared VAE is upcast to fp32 once
    and the decode retried. A NaN after that is an error, never a silent black image. Large
    pictures of a batch are decoded one at a time, 停止 heard between them.
    """
    if len(latents) > 1 and latents.shape[-1] * latents.shape[-2] * 64 >= LARGE_DECODE:
        images = []
        for one in latents.split(1):
            check_cancel(cancel)
            images += decode_latents(pipe, one)
        return images
    vae = pipe.vae
    # The Flux autoencoder (Z-Image) also shifts its latents; SD's has no shift.
    shift = vae.config.get("shift_factor") or 0.0
    with torch.no_grad():
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift, return_dict=False)[0]
        if not torch.isfinite(image).all() and vae.dtype != torch.float32:
            log.warning("VAE produced NaN in %s; upcasting the VAE to fp32 and retrying", vae.dtype)
            vae.to(torch.float32)
            image = vae.decode(latents.float() / vae.config.scaling_factor + shift, return_dict=False)[0]
    if not torch.isfinite(image).all():
        raise DanqingError("nan_output")
    return pipe.image_processor.postprocess(image.float(), output_type="pil", do_denormalize=[True] * len(image))


@dataclass
class Generated:
    """What a generation task made: the images of ``request`` (the effective one: a draft's
    own size), their seeds, and the post-step's upscaled twins when there was one."""

    images: list[Image.Image]
    seeds: list[int]
    seconds: float
    request: Txt2Img
    notices: dict = field(default_factory=dict)
    upscaled: list[Image.Image] | None = None
    hires: Upscale | None = None  # the post-step's upscale
    hires_pass: str | None = None  # the 高清修复 pass's upscaler (a file, or "latent"), when it ran
    upscale_seconds: float = 0.0
    maps: list[Image.Image] = field(default_factory=list)  # ControlNet maps, saved beside the images
    inputs: list[tuple[Image.Image, str]] = field(default_factory=list)  # an edit's input (and mask), by role
    # Where it ran, when not here (a Ray Serve replica): its model hash, VAE, process, attempts.
    facts: dict | None = None


def build_pipeline(store, params: Txt2Img, cls=None, **components):
    """A task pipeline sharing the base modules, with this job's own scheduler.

    ``cls`` defaults to the family's text-to-image class; ControlNet passes its pipeline class and the
    ``controlnet`` component. The job's LoRAs are switched on the shared base first (a no-op
    when they are the same as last time), so every task gets them.
    """
    base = store.base()
    apply_loras(store, params.loras)
    scheduler = make_scheduler(params.sampler, base.scheduler.config, params.schedule_type, flow=store.family.flow)
    return store.pipeline(cls or store.family.pipeline_class("txt2img"), scheduler=scheduler, **components)


def prompt_arguments(pipe, prompt: str, negative_prompt: str, notices: dict, store=None,
                     clip_skip: int = 1) -> dict:
    """Plain strings when the prompt fits the token window and names no embedding (and no clip
    skip is asked), our own encoding otherwise (tasks/prompts.py). ``notices`` gets the chunk
    count and the embeddings used, by name, with their files."""
    if store is not None and store.family.extra.get("plain_prompts"):
        # Kolors' ChatGLM reads the prompt as written: emphasis brackets are taken out, the words kept
        negative_text = plain_text(parse_weights(negative_prompt)) if negative_prompt else ""
        return {"prompt": plain_text(parse_weights(prompt)), "negative_prompt": negative_text or None}
    usable = {e.name: e for e in store.embeddings() if e.vectors is not None} if store is not None else {}
    used = used_embeddings({name: None for name in usable}, prompt, negative_prompt)
    vectors = {name: usable[name].vectors for name in used}
    long = encode_long(pipe, prompt, negative_prompt, pipe.device, vectors, clip_skip,
                       always=bool(used) or clip_skip > 1)
    if used:
        notices["embeddings"] = {name: usable[name].file for name in used}
    if long is None:  # no syntax in it: the text as typed, escapes resolved
        negative_text = plain_text(parse_weights(negative_prompt)) if negative_prompt else ""
        return {"prompt": plain_text(parse_weights(prompt)), "negative_prompt": negative_text or None}
    embeds, chunks = long
    if chunks > 1:
        notices["prompt_chunks"] = chunks
    return embeds


def denoise(
    store,
    params: Txt2Img,
    cls=None,
    components: dict | None = None,
    call_kwargs: dict | None = None,
    cancel: threading.Event | None = None,
    on_step: StepHook | None = None,
    on_preview: PreviewHook | None = None,
    steps: int | None = None,
    notices: dict | None = None,
):
    """Build the job's pipeline and denoise to latents: (pipeline, latents). ``steps``: the U-Net
    steps the call really runs (an img2img pass runs ``steps × strength``), for the progress
    line. Pipelines whose call takes no size (img2img) get none: their image sets it."""
    check_cancel(cancel)
    # 1. A pipeline for this job: shared modules, its own scheduler.
    pipe = build_pipeline(store, params, cls, **(components or {}))
    notices = {} if notices is None else notices
    decode = preview_decoder(store) if on_preview is not None else None
    previewer = Previewer(decode, on_preview, store.settings.preview_every) if decode else None
    accepted = inspect.signature(pipe.__call__).parameters
    size = {"width": params.width, "height": params.height} if "width" in accepted else {}
    total = steps or params.num_inference_steps
    eta = step_eta(params.sampler, params.eta)
    if eta is not None and "eta" in accepted:
        call_kwargs = {"eta": eta, **(call_kwargs or {})}
    if params.guidance_rescale and "guidance_rescale" in accepted:  # CFG rescale (0: the plain CFG)
        call_kwargs = {"guidance_rescale": params.guidance_rescale, **(call_kwargs or {})}
    # 2. Denoise to latents; the callback reports steps and honours stop.
    # DeepCache reuses a U-Net's deep blocks; a transformer (Z-Image) has none to reuse: said.
    unet = getattr(pipe, "unet", None)
    if unet is None and params.deepcache > 1:
        notices["deepcache_skipped"] = store.family.label
    with deep_cache(unet, params.deepcache if unet is not None else 1):
        latents = pipe(
            **prompt_arguments(pipe, params.prompt, params.negative_prompt, notices, store, params.clip_skip),
            **size,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            num_images_per_prompt=params.num_images_per_prompt,
            generator=generators(params.seed, params.num_images_per_prompt),
            output_type="latent",
            callback_on_step_end=step_callback(total, cancel, on_step, previewer),
            **(call_kwargs or {}),
        ).images
    check_cancel(cancel)
    return pipe, latents


def generate(store, params: Txt2Img, **options) -> Generated:
    """``denoise`` (same options: pipeline class, components, call arguments, stop, step hook,
    live previews), then decode the latents into the images of a ``Generated``."""
    started = time.perf_counter()
    notices: dict = options.pop("notices", None) or {}
    pipe, latents = denoise(store, params, notices=notices, **options)
    # 3. Decode (fp32 fallback on NaN).
    images = decode_latents(pipe, latents, options.get("cancel"))
    return Generated(images=images, seeds=params.seeds(), seconds=time.perf_counter() - started,
                     request=params, notices=notices)


def offset_steps(on_step: StepHook | None, before: int, total: int) -> StepHook | None:
    """A step hook for the second of two passes: its steps counted after ``before`` of ``total``."""
    if on_step is None:
        return None
    return lambda i, n: on_step(before + i, total)


# A dedicated inpainting model: its U-Net also takes the mask and the masked image (4 + 1 + 4).
UNET_INPAINT_CHANNELS = 9


def is_inpainting_model(store) -> bool:
    return store.family.denoiser == "unet" and store.denoiser().config.in_channels == UNET_INPAINT_CHANNELS


def blank_canvas(params: Txt2Img) -> dict:
    """Text to image on an inpainting model, as A1111 does it: everything masked over a blank
    (mid-grey) picture, from pure noise. Arguments for diffusers' inpaint pipelines."""
    return {"image": Image.new("RGB", (params.width, params.height), (127, 127, 127)),
            "mask_image": Image.new("L", (params.width, params.height), 255), "strength": 1.0}
