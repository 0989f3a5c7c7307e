"""The fast-path switches (attention backend, channels_last, fused QKV, VAE tiling, compile),
each through a public diffusers/torch API, and the one narrow log filter for diffusers' false
float32 warning."""

from __future__ import annotations

import logging

import torch

from .settings import EngineSettings


class _EmptyFp32ListFilter(logging.Filter):
    """diffusers 0.42's ``ModelMixin.to(dtype)`` warns "modules that should be kept in float32:
    []" on every cast, even with no such module; ``from_pipe`` casts on every job, so each job
    logged two false warnings. Only that empty-list form is dropped: a real list still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


def quiet_false_fp32_warning() -> None:
    target = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _EmptyFp32ListFilter) for f in target.filters):
        target.addFilter(_EmptyFp32ListFilter())


def apply_speed_options(pipe, settings: EngineSettings) -> None:
    """The fast-path switches, each through a public diffusers/torch API (bench/RESULTS.md
    records what each is worth where it was measured)."""
    if settings.attention == "naive":
        from diffusers.models.attention_processor import AttnProcessor

        pipe.unet.set_attn_processor(AttnProcessor())
    elif settings.attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    if settings.fuse_qkv:
        pipe.fuse_qkv_projections(unet=True, vae=False)
    if settings.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.compile:
        # In place (nn.Module.compile): the store, from_pipe and LoRA keep the same module object.
        pipe.unet.compile(mode="max-autotune-no-cudagraphs" if pipe.device.type == "cuda" else None)
