"""One safe reader for weight files: ``.safetensors``, and pickles (``.bin``/``.pth``/``.pt``)
loaded with ``weights_only=True`` so that anything but plain tensors is refused, never run.

Every model kind that reads a state dict (LoRA, ESRGAN) goes through ``read_tensors``; the error
codes carry the kind (``lora_file_corrupt``, ``upscaler_unsafe_file``, ...).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import pickle
from pathlib import Path

import torch

from ..errors import ModelError

log = logging.getLogger(__name__)


def read_tensors(path: Path, label: str, kind: str, not_tensors: str,
                 wrappers: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` dict in ``path``.

    Errors: ``{kind}_file_corrupt`` (truncated, not a weight file), ``{kind}_unsafe_file`` (a
    pickle holding more than tensors), ``not_tensors`` (readable, but not a flat dict of
    tensors). ``wrappers``: keys whose dict holds the real weights (``params_ema``, ...), the
    first present one is taken; a DataParallel ``module.`` prefix is dropped.
    """
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc).lower()
        if "weights only" not in text or "unsupported operand" in text:  # a broken pickle, not a refused one
            log.warning("cannot read %s %s: %s", kind, label, exc)
            raise ModelError(f"{kind}_file_corrupt", name=label) from None
        # weights_only refuses any global it does not know (a class, a function, os.system).
        log.warning("refused %s %s: the pickle holds more than tensors (%s)", kind, label, str(exc).splitlines()[0][:200])
        raise ModelError(f"{kind}_unsafe_file", name=label) from None
    except Exception as exc:  # truncated zip, bad header, not a weight file at all
        log.warning("cannot read %s %s: %s", kind, label, exc)
        raise ModelError(f"{kind}_file_corrupt", name=label) from None
    if isinstance(state, dict):
        for wrapper in wrappers:
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelError(not_tensors, name=label, detail="not a flat dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


@functools.lru_cache(maxsize=1024)
def short_hash(path: str, size: int, mtime_ns: int) -> str:
    """A1111's short hash: the first 10 hex digits of the file's SHA-256 (what Civitai and A1111
    match images against), cached per path, size and mtime."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def file_hash(path: Path) -> str:
    stat = path.stat()
    return short_hash(str(path), stat.st_size, stat.st_mtime_ns)


def model_type(folder: Path) -> str | None:
    """The ``model_type`` a transformers folder's ``config.json`` says (None: no readable config)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None
