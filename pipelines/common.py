"""Pieces every generation task shares: seeded generators, the step callback (progress and
stop), and VAE decoding with the fp32 fallback when fp16 decoding overflows to NaN."""

from __future__ import annotations

import logging
import threading
from typing import Callable

import torch

from .errors import DanqingError, JobCancelled

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


def decode_latents(pipe, latents: torch.Tensor):
    """Latents (as the pipeline returns them with ``output_type="latent"``) to PIL images.

    fp16 VAEs can overflow to NaN on some images; then the shared VAE is upcast to fp32 once
    and the decode retried. A NaN after that is an error, never a silent black image.
    """
    vae = pipe.vae
    with torch.no_grad():
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        if not torch.isfinite(image).all() and vae.dtype != torch.float32:
            log.warning("VAE produced NaN in %s; upcasting the VAE to fp32 and retrying", vae.dtype)
            vae.to(torch.float32)
            image = vae.decode(latents.float() / vae.config.scaling_factor, return_dict=False)[0]
    if not torch.isfinite(image).all():
        raise DanqingError("nan_output")
    return pipe.image_processor.postprocess(image.float(), output_type="pil", do_denormalize=[True] * len(image))
