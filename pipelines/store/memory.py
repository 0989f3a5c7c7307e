"""How the base model sits in GPU memory: chosen by itself from the free memory when the model
is loaded (``--memory-mode auto``), or named by the operator, and shown in 系统信息.

- ``resident``: every part on the GPU in the working dtype (Z-Image in bf16: about 21 GB).
- ``park``: the text encoders live on the CPU and visit the GPU only while they encode a
  prompt (a forward pre-hook brings them, a forward hook sends them back): Z-Image's Qwen3-4B
  (8 GB) and Kolors' ChatGLM3-6B (12 GB) run once per prompt, so the denoiser and the VAE keep
  the GPU (Z-Image: about 13 GB).
- ``fp8``: ``park``, and the denoiser's weights stored in float8 (e4m3), each layer cast to the
  working dtype as it runs (diffusers' layerwise casting): half the denoiser's memory, for
  10–16 GB cards.

A GGUF transformer (formats/zimage_files.py) is its own mode: it is quantised on disk already.
Nunchaku's 4-bit SVDQuant checkpoints load through diffusers' Nunchaku quantizer, which needs
CUDA, a non-Hopper NVIDIA GPU and the ``kernels`` package; anywhere else the store says so in
Chinese (``svdquant_unavailable``).
"""

from __future__ import annotations

import logging

import torch

from .cache import module_bytes

log = logging.getLogger(__name__)

MODES = ("auto", "resident", "park", "fp8")
# What stays free on the GPU beyond the weights: activations of a 1024² job, the VAE decode.
HEADROOM = 3 * 1024**3


def parts_bytes(pipe, family) -> tuple[int, int]:
    """(denoiser + VAE bytes, text encoder bytes) of a loaded pipeline."""
    encoders = sum(module_bytes(getattr(pipe, name)) for name in family.text_encoders)
    return module_bytes(family.denoiser_of(pipe)) + module_bytes(pipe.vae), encoders


def choose(asked: str, device: torch.device, free: int | None, pipe, family) -> tuple[str, str]:
    """(mode, why): the operator's choice, or on a GPU the lightest mode that fits ``free``
    bytes. Off a GPU everything stays where it is (``resident``)."""
    if asked != "auto":
        return asked, "asked"
    if device.type != "cuda" or free is None:
        return "resident", "not_gpu"
    main, encoders = parts_bytes(pipe, family)
    if main + encoders + HEADROOM <= free:
        return "resident", "fits"
    if main + HEADROOM <= free or getattr(family.denoiser_of(pipe), "is_quantized", False):
        return "park", "encoders_parked"
    return "fp8", "denoiser_fp8"


def apply(mode: str, pipe, family, device: torch.device, dtype: torch.dtype) -> None:
    """Place the freshly loaded (CPU) pipeline's parts for ``mode`` on ``device``."""
    denoiser = family.denoiser_of(pipe)
    if mode == "fp8" and not getattr(denoiser, "is_quantized", False):
        denoiser.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    if mode in ("park", "fp8"):
        for name in family.text_encoders:
            park(getattr(pipe, name), device)
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module) and name not in family.text_encoders:
                module.to(device)
    elif device.type != "cpu":
        pipe.to(device)


def describe(pipe, family, mode: str, why: str) -> dict:
    """系统信息's line: the mode, why, and whether the denoiser is a GGUF one."""
    quantized = getattr(family.denoiser_of(pipe), "is_quantized", False)
    return {"mode": "gguf" if quantized else mode, "why": why,
            "gguf": bool(quantized), "parked": [n for n in family.text_encoders
                                                if getattr(getattr(pipe, n), "_danqing_parked", False)]}


def svdquant_config(folder) -> dict | None:
    """The Nunchaku (SVDQuant) quantisation config of a diffusers folder's transformer, if any."""
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    quant = config.get("quantization_config") or {}
    return quant if str(quant.get("quant_method", "")).startswith("nunchaku") else None


def park(encoder: torch.nn.Module, device: torch.device) -> None:
    """Keep ``encoder`` on the CPU between prompts; it runs on ``device``. The pipeline sees
    it on ``device`` (its inputs are put there), the memory is the CPU's."""

    def arrive(module, args, kwargs):
        module.to(device)
        return args, kwargs

    def leave(module, args, kwargs, output):
        module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return output

    encoder.to("cpu")
    encoder.register_forward_pre_hook(arrive, with_kwargs=True)
    encoder.register_forward_hook(leave, with_kwargs=True)
    encoder._danqing_parked = True  # 系统信息 reads it
