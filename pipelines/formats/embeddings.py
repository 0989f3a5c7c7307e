"""Textual-inversion embeddings (A1111's ``embeddings/`` folder): the learned token vectors in
each file, read without running any pickle code.

Layouts: A1111 ``.pt`` (``string_to_param: {"*": tensor[n, width]}``), A1111 ``.safetensors``
(``emb_params``), diffusers ``learned_embeds.bin``/``.safetensors`` (``{token: vector}``), and
SDXL's ``clip_l`` + ``clip_g`` pairs (on an SDXL base their vectors side by side, ``clip_l``
first, as the two encoders' widths; on an SD 1.x base named as SDXL's). A file is usable when
its width is the text encoder's (SDXL: both encoders' together); otherwise it is listed with the
reason.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MAX_VECTORS = 75  # A1111's limit: more than one window of vectors is no embedding


@dataclass(frozen=True)
class Embedding:
    name: str  # what the prompt says: the file name without its ending
    file: str  # the name under models/embeddings
    vectors: torch.Tensor | None  # (n, width), float32 on the CPU; None when unusable
    width: int | None
    problem: str | None  # None, or: "unreadable", "unsafe", "sdxl", "layout", "width"


def _load(path: Path):
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _vectors(data, pair: bool = False) -> tuple[torch.Tensor | None, str | None]:
    if not isinstance(data, dict) or not data:
        return None, "layout"
    if "clip_l" in data and "clip_g" in data:
        if not pair:
            return None, "sdxl"
        parts = [_vectors({"emb_params": data[k]})[0] for k in ("clip_l", "clip_g")]
        if any(p is None for p in parts) or parts[0].shape[0] != parts[1].shape[0]:
            return None, "layout"
        return torch.cat(parts, dim=1), None
    if isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        tensor = next(iter(data["string_to_param"].values()))
    elif "emb_params" in data:
        tensor = data["emb_params"]
    elif len(data) == 1:
        tensor = next(iter(data.values()))
    else:
        return None, "layout"
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2) or not tensor.is_floating_point():
        return None, "layout"
    tensor = tensor.detach().float().reshape(-1, tensor.shape[-1])
    if not 0 < tensor.shape[0] <= MAX_VECTORS or not torch.isfinite(tensor).all():
        return None, "layout"
    return tensor, None


def read_embedding(path: Path, file: str, width: int, pair: bool = False) -> Embedding:
    """The embedding in ``path``, checked against a text encoder ``width`` wide (``pair``: SDXL's
    two encoders, ``width`` their widths together)."""
    name = Path(file).name
    name = name[: -len(path.suffix)] if path.suffix else name
    try:
        data = _load(path)
    except pickle.UnpicklingError as exc:
        safe = "weights only" not in str(exc).lower() or "unsupported operand" in str(exc).lower()
        log.warning("embedding %s refused: %s", file, str(exc).splitlines()[0][:200])
        return Embedding(name, file, None, None, "unreadable" if safe else "unsafe")
    except Exception as exc:  # truncated, not a weight file
        log.warning("embedding %s unreadable: %s", file, exc)
        return Embedding(name, file, None, None, "unreadable")
    vectors, problem = _vectors(data, pair)
    if vectors is None:
        return Embedding(name, file, None, None, problem)
    if vectors.shape[1] != width:
        return Embedding(name, file, None, int(vectors.shape[1]), "width")
    return Embedding(name, file, vectors, width, None)
