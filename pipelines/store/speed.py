"""The fast-path switches (attention backend, channels_last, fused QKV, VAE tiling, compile),
each through a public diffusers/torch API."""

from __future__ import annotations

import torch

from .settings import EngineSettings


def apply_speed_options(pipe, settings: EngineSettings, denoiser=None) -> None:
    """The fast-path switches, each through a public diffusers/torch API (bench/RESULTS.md
    records what each is worth where it was measured). ``denoiser``: the pipeline's U-Net or
    transformer (formats/families.py; the U-Net when not given)."""
    denoiser = pipe.unet if denoiser is None else denoiser
    if settings.attention == "naive":
        from diffusers.models.attention_processor import AttnProcessor

        denoiser.set_attn_processor(AttnProcessor())
    elif settings.attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    if settings.fuse_qkv:
        if hasattr(pipe, "fuse_qkv_projections"):
            pipe.fuse_qkv_projections(unet=True, vae=False)
    if settings.channels_last:
        denoiser.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.compile:
        # In place (nn.Module.compile): the store, from_pipe and LoRA keep the same module object.
        denoiser.compile(mode="max-autotune-no-cudagraphs" if pipe.device.type == "cuda" else None)
