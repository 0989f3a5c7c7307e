"""Device and dtype policy: fp16 on CUDA, fp32 on CPU (bf16 on CPUs without native support is
8-90x slower than fp32, measured), the attention backend in use, what out of memory looks like
and how memory is given back."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from ..errors import ParamError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DevicePlan:
    device: torch.device
    dtype: torch.dtype


def plan_device(device: str = "auto", dtype: str = "auto") -> DevicePlan:
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ParamError("bad_device", value=device) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParamError("bad_device", value=device)
    if dtype == "auto":
        chosen = torch.float16 if dev.type in ("cuda", "mps") else torch.float32
    elif dtype in DTYPES:
        chosen = DTYPES[dtype]
    else:
        raise ParamError("bad_dtype", value=dtype)
    return DevicePlan(dev, chosen)


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


def attention_backend(unet) -> str:
    """A short name for the attention processors the denoiser runs (SDPA is FlashAttention-class).
    A transformer on diffusers' attention dispatcher (Z-Image) names its backend: none set is
    PyTorch's native SDPA."""
    if not hasattr(unet, "attn_processors"):
        backends = {getattr(m.processor, "_attention_backend", None) for m in unet.modules() if hasattr(m, "processor")}
        backends = {str(getattr(b, "value", b)) for b in backends if b is not None}
        return ",".join(sorted(backends)) if backends and backends != {"native"} else "sdpa"
    names = {type(p).__name__ for p in unet.attn_processors.values()}
    if names <= {"AttnProcessor2_0"}:
        return "sdpa"
    if any("XFormers" in n for n in names):
        return "xformers"
    if names <= {"AttnProcessor"}:
        return "naive"
    return ",".join(sorted(names))


def is_oom(exc: BaseException) -> bool:
    """Out of memory on any device: CUDA's error, or the CPU allocator's "can't allocate memory"."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def free_memory(device: torch.device) -> None:
    """Collect garbage and give cached GPU memory back (after a switch, a failure, an eviction)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
