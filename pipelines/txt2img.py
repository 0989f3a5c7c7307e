"""Text-to-image on the store's shared base pipeline.

``generate`` is the denoise-and-decode loop every task shares (ControlNet passes its own
pipeline class, components and call arguments); ``run`` is text-to-image itself.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from PIL import Image

from .common import StepHook, check_cancel, decode_latents, generators, step_callback
from .preview import PreviewHook, Previewer
from .params import Txt2ImgParams
from .deepcache import deep_cache
from .prompts import long_prompt_embeds
from .schedulers import make_scheduler


@dataclass
class Generated:
    images: list[Image.Image]
    seeds: list[int]
    seconds: float
    notices: dict = field(default_factory=dict)


def build_pipeline(store, params: Txt2ImgParams, cls=None, **components):
    """A task pipeline sharing the base modules, with this job's own scheduler.

    ``cls`` defaults to StableDiffusionPipeline; ControlNet passes its pipeline class and the
    ``controlnet`` component. The job's LoRAs are switched on the shared base first (a no-op
    when they are the same as last time), so every task gets them. The caller holds
    ``store.lock``.
    """
    from diffusers import StableDiffusionPipeline

    from .lora import apply_loras

    base = store.base()
    apply_loras(store, params.loras)
    scheduler = make_scheduler(params.sampler, base.scheduler.config)
    return store.pipeline(cls or StableDiffusionPipeline, scheduler=scheduler, **components)


def prompt_arguments(pipe, prompt: str, negative_prompt: str, notices: dict) -> dict:
    """Plain strings when the prompt fits the token window, chunked embeddings otherwise."""
    long = long_prompt_embeds(pipe, prompt, negative_prompt, pipe.device)
    if long is None:
        return {"prompt": prompt, "negative_prompt": negative_prompt or None}
    positive, negative, chunks = long
    notices["prompt_chunks"] = chunks
    return {"prompt_embeds": positive, "negative_prompt_embeds": negative}


def generate(
    store,
    params: Txt2ImgParams,
    cls=None,
    components: dict | None = None,
    call_kwargs: dict | None = None,
    cancel: threading.Event | None = None,
    on_step: StepHook | None = None,
    on_preview: PreviewHook | None = None,
) -> Generated:
    """Build the job's pipeline, denoise to latents, decode. Runs under the store lock.
    ``on_preview(image, step, total)`` gets live previews (pipelines/preview.py) when given."""
    started = time.perf_counter()
    with store.lock:
        check_cancel(cancel)
        # 1. A pipeline for this job: shared modules, its own scheduler.
        pipe = build_pipeline(store, params, cls, **(components or {}))
        notices: dict = {}
        decode = store.preview_decoder() if on_preview is not None else None
        previewer = Previewer(decode, on_preview, store.settings.preview_every) if decode else None
        # 2. Denoise to latents; the callback reports steps and honours stop.
        with deep_cache(pipe.unet, params.deepcache):
            latents = pipe(
                **prompt_arguments(pipe, params.prompt, params.negative_prompt, notices),
                width=params.width,
                height=params.height,
                num_inference_steps=params.num_inference_steps,
                guidance_scale=params.guidance_scale,
                num_images_per_prompt=params.num_images_per_prompt,
                generator=generators(params.seed, params.num_images_per_prompt),
                output_type="latent",
                callback_on_step_end=step_callback(params.num_inference_steps, cancel, on_step, previewer),
                **(call_kwargs or {}),
            ).images
        check_cancel(cancel)
        # 3. Decode (fp32 fallback on NaN).
        images = decode_latents(pipe, latents)
    seeds = [params.seed + i for i in range(params.num_images_per_prompt)]
    return Generated(images=images, seeds=seeds, seconds=time.perf_counter() - started, notices=notices)


def run(
    store,
    params: Txt2ImgParams,
    cancel: threading.Event | None = None,
    on_step: StepHook | None = None,
    on_preview: PreviewHook | None = None,
) -> Generated:
    return generate(store, params, cancel=cancel, on_step=on_step, on_preview=on_preview)
