"""LoRA files: their metadata, and every key layout mapped onto the base pipeline's modules
(SD 1.x/2.x: one text encoder; SDXL: two, as its family says: formats/families.py).

Formats: diffusers/peft (``lora_A``/``lora_B``), Kohya/A1111 (``lora_unet_...`` with alpha, conv
layers, LyCORIS LoCon's ``lora_down``/``lora_up`` convolutions; SD 1.x ``lora_te_``, SDXL
``lora_te1_``/``lora_te2_``), PAI's old attention-processor ``pytorch_lora_weights.bin``. A LoRA
of the other family is named as such (``lora_family``), never half-loaded. Reading only: loading an
adapter onto the shared base is tasks/lora.py; which adapters are loaded is the store's table.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelError
from .weights import read_tensors

log = logging.getLogger(__name__)


TRIGGER_WORDS = 10


HEADER_LIMIT = 100 * 1024 * 1024  # a safetensors JSON header larger than this is not a LoRA


# Components of a pipeline that take LoRA weights, as named in state-dict prefixes (SDXL's
# second text encoder included: its family says whether the base has one).
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
DENOISERS = ("unet", "transformer")


# Prefixes of other architectures' components (SD3, Flux, ...): refused, never skipped.
FOREIGN_PREFIXES = ("text_encoder_3.", "transformer.", "lora_transformer_")


# Which family a LoRA is for, from its text-encoder prefixes, else its cross-attention width.
_SDXL_PREFIXES = ("lora_te1_", "lora_te2_", "text_encoder_2.")
_CONTEXT_WIDTHS = {768: "sd1", 1024: "sd1", 2048: "sdxl"}
# Z-Image's transformer blocks (any layout: dots or Kohya's underscores): a U-Net has none.
_ZIMAGE_MODULE = re.compile(r"(^|[._])(layers|noise_refiner|context_refiner)[._]\d+[._](attention|feed_forward|adaLN_modulation)")


def lora_family(state: dict) -> str | None:
    """"zimage", "sdxl", "sd1" (SD 1.x/2.x) or None (cannot tell: a tiny or U-Net-only file of
    odd width)."""
    if any(_ZIMAGE_MODULE.search(k) for k in state):
        return "zimage"
    if any(k.startswith(_SDXL_PREFIXES) for k in state):
        return "sdxl"
    if any(k.startswith("lora_te_") for k in state):
        return "sd1"
    for key, tensor in state.items():
        if ("attn2_to_k" in key or "attn2.to_k" in key) and key.endswith(
                (".lora_down.weight", ".lora_A.weight", ".lora.down.weight")) and tensor.ndim == 2:
            found = _CONTEXT_WIDTHS.get(int(tensor.shape[1]))
            if found:
                return found
    return None


# PAI / diffusers-old attention processors: processor.to_q_lora.down -> the module it adapts.
ATTN_PROCESSOR = {
    "unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    "text_encoder": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}
ATTN_PROCESSOR["text_encoder_2"] = ATTN_PROCESSOR["text_encoder"]


ATTN_LORA = re.compile(r"^(?:(?P<head>.*)\.)?(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight$")


# Key endings of the two LoRA matrices, in every layout the converters leave behind.
DOWN_UP = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
    (".lora_down.weight", ".lora_up.weight"),
)


def context_width(path: Path) -> int | None:
    """The cross-attention width a LoRA file was made for (768/1024: SD 1.x/2.x, 2048: SDXL),
    from the shape of a ``attn2 to_k`` down matrix in its header; None when it has none."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > HEADER_LIMIT:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return None
    for key, entry in header.items():
        if (("attn2_to_k" in key or "attn2.to_k" in key) and key.endswith((".lora_down.weight", ".lora_A.weight", ".lora.down.weight"))
                and isinstance(entry, dict) and len(entry.get("shape", ())) == 2):
            return int(entry["shape"][1])
    return None


def read_header(path: Path) -> tuple[dict[str, str], list[str]]:
    """The ``__metadata__`` and the tensor names of a safetensors header, read without loading
    any tensor (({}, []) for other formats and unreadable files)."""
    if path.suffix.lower() != ".safetensors":
        return {}, []
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > HEADER_LIMIT:
                return {}, []
            header = json.loads(f.read(length))
        metadata = header.pop("__metadata__", None) or {}
        return {str(k): str(v) for k, v in metadata.items()}, [str(k) for k in header]
    except (OSError, ValueError, struct.error, AttributeError):
        return {}, []


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header, read without loading any tensor."""
    return read_header(path)[0]


def trigger_words(metadata: dict[str, str], limit: int = TRIGGER_WORDS) -> list[str]:
    words: list[str] = []
    phrase = metadata.get("modelspec.trigger_phrase", "")
    words += [w.strip() for w in phrase.split(",") if w.strip()]
    try:
        frequency = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except ValueError:
        frequency = {}
    counts: dict[str, int] = {}
    if isinstance(frequency, dict):
        for tags in frequency.values():
            if isinstance(tags, dict):
                for tag, count in tags.items():
                    tag = str(tag).strip()
                    if tag and isinstance(count, (int, float)):
                        counts[tag] = counts.get(tag, 0) + int(count)
    words += [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return list(dict.fromkeys(words))[:limit]


def base_model(metadata: dict[str, str]) -> str | None:
    for key in ("ss_base_model_version", "ss_sd_model_name", "modelspec.architecture"):
        if metadata.get(key):
            return metadata[key]
    return None


# 3. Reading and mapping a file -----------------------------------------------------------
def read_state_dict(path: Path, label: str) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file (formats/weights.py: pickles never run)."""
    return read_tensors(path, label, "lora", "lora_unsupported_format")


@dataclass
class LoraLayers:
    """A LoRA mapped onto this base: (component, module path) -> (down, up), scale folded in."""

    layers: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def diffusers_state_dict(self) -> dict[str, torch.Tensor]:
        """Keys diffusers 0.42 loads without guessing: peft ``lora_A/B`` for the U-Net, the
        ``lora_linear_layer`` form for the text encoder (its peft form with only MLP layers
        fails there: "Could not automatically infer state dict type"). ``lora_A`` comes first:
        diffusers looks at the first key to pick a converter."""
        downs, ups = {}, {}
        for (component, path), (down, up) in self.layers.items():
            if component in DENOISERS:
                downs[f"{component}.{path}.lora_A.weight"], ups[f"{component}.{path}.lora_B.weight"] = down, up
            else:  # text_encoder, or SDXL's text_encoder_2
                downs[f"{component}.{path}.lora_linear_layer.down.weight"] = down
                ups[f"{component}.{path}.lora_linear_layer.up.weight"] = up
        return {**downs, **ups}


def map_state_dict(pipe, state: dict[str, torch.Tensor], label: str) -> LoraLayers:
    """Map every key of a LoRA state dict onto a module of ``pipe``, or raise.

    Raises ``lora_unsupported_format`` (keys that are not LoRA matrices: LyCORIS, DoRA, ...),
    ``lora_no_match`` (no key names a module of this model) or ``lora_wrong_architecture``
    (another model's components, modules or shapes).
    """
    from .families import FAMILIES, family_of_pipeline

    family = family_of_pipeline(pipe)
    components = (family.denoiser, *family.text_encoders)
    # 1. Kohya/A1111 names go through diffusers' own converter (alphas come back separately).
    alphas: dict[str, float] = {}
    made_for = lora_family(state)
    if made_for == "sdxl" and family.name == "kolors" and not any(k.startswith(_SDXL_PREFIXES) for k in state):
        made_for = None  # Kolors' U-Net is SDXL's: a U-Net-only 2048-wide LoRA may be either's
    if made_for is not None and made_for != family.name:  # an SD 1.x LoRA on SDXL, a Z-Image one on SD, ...
        raise ModelError("lora_family", name=label, lora=FAMILIES[made_for].label, base=family.label)
    if family.denoiser == "transformer":
        state = _transformer_lora(family, state, label)
    elif any(k.startswith(FOREIGN_PREFIXES) for k in state):
        raise ModelError("lora_wrong_architecture", name=label, detail=_first(state, FOREIGN_PREFIXES))
    kohya_layers = 0
    if family.denoiser == "unet" and state and all(k.startswith(("lora_unet_", *family.lora_text_prefixes)) for k in state):
        # LyCORIS (hada_, lokr_), DoRA (dora_scale) and the like: refused, not half-read.
        odd = next((k for k in state if not k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))), None)
        if odd is not None:
            raise ModelError("lora_unsupported_format", name=label, detail=odd[:120])
        kohya_layers = sum(k.endswith(".lora_down.weight") for k in state)
        try:
            state, network_alphas = family.pipeline_class("txt2img").lora_state_dict(dict(state), unet_config=pipe.unet.config)
        except (ValueError, KeyError, IndexError) as exc:
            log.warning("diffusers cannot convert the Kohya LoRA %s: %s", label, exc)
            raise ModelError("lora_unsupported_format", name=label, detail=str(exc)[:120]) from exc
        alphas = {k: float(v) for k, v in (network_alphas or {}).items()}
    # 2. Each key -> (component, module path, "down" | "up" | "alpha").
    parts: dict[tuple[str, str], dict[str, object]] = {}
    for key, tensor in state.items():
        if key.endswith(".alpha"):
            alphas[key] = float(tensor.float().reshape(-1)[0]) if tensor.numel() else 1.0
            continue
        parsed = _parse_key(key)
        if parsed is None:
            raise ModelError("lora_unsupported_format", name=label, detail=key[:120])
        component, path, part = parsed
        parts.setdefault((component, path), {})[part] = tensor
    for key, value in alphas.items():
        parsed = _parse_key(key.removesuffix(".alpha"), alpha=True)
        if parsed is not None and parsed[:2] in parts:
            parts[parsed[:2]]["alpha"] = value
    if not parts:
        raise ModelError("lora_no_match", name=label, detail="empty")
    # 3. Find each module on this base and check shapes.
    mapped = LoraLayers()
    missing: list[str] = []
    for (component, path), found in parts.items():
        if "down" not in found or "up" not in found:
            raise ModelError("lora_unsupported_format", name=label, detail=f"{component}.{path} lacks a matrix")
        if component not in components:
            raise ModelError("lora_wrong_architecture", name=label, detail=component)
        model = getattr(pipe, component)
        module_path = _module_path(model, path)
        if module_path is None:
            missing.append(f"{component}.{path}")
            continue
        module = model.get_submodule(module_path)
        down, up = _fit(getattr(module, "base_layer", module), found["down"], found["up"], label, f"{component}.{path}")
        rank = down.shape[0]
        alpha = found.get("alpha")  # Kohya: scale alpha/rank; 0 or none means rank (scale 1)
        if alpha and math.isfinite(alpha) and alpha != rank:
            up = up.float() * (alpha / rank)
        mapped.layers[(component, module_path)] = (down, up)
    if not mapped.layers:
        raise ModelError("lora_no_match", name=label, detail=missing[0][:120])
    if kohya_layers and kohya_layers != len(mapped.layers) + len(missing):  # the converter lost some
        raise ModelError("lora_unsupported_format", name=label, detail=f"{kohya_layers} Kohya layers")
    if missing:
        log.warning("LoRA %s names %d modules this model lacks, e.g. %s", label, len(missing), missing[0])
        raise ModelError("lora_wrong_architecture", name=label, detail=missing[0][:120])
    return mapped


_FUSED_QKV = re.compile(r"^(?P<head>.*attention[._])qkv(?P<tail>\.(?:lora_down|lora_up|lora_A|lora_B)\.weight|\.alpha)$")


def _split_fused_qkv(state: dict, label: str) -> dict:
    """LoRAs trained on Z-Image's original layout (musubi-tuner, some ComfyUI files) adapt the
    fused ``attention.qkv``: one down matrix, and an up matrix with the q, k and v rows stacked.
    Three LoRAs on ``to_q``, ``to_k``, ``to_v`` sharing that down matrix (and alpha) are exactly
    the same update."""
    out = {}
    for key, value in state.items():
        match = _FUSED_QKV.match(key)
        if match is None:
            out[key] = value
            continue
        up = ".lora_up." in match["tail"] or ".lora_B." in match["tail"]
        if up and (value.ndim != 2 or value.shape[0] % 3):
            raise ModelError("lora_wrong_architecture", name=label, detail=key[:120])
        parts = value.chunk(3, dim=0) if up else (value,) * 3
        for proj, part in zip("qkv", parts):
            out[f"{match['head']}to_{proj}{match['tail']}"] = part.contiguous()
    return out


def _transformer_lora(family, state: dict, label: str) -> dict:
    """A Z-Image LoRA in any layout people publish — diffusers/PEFT (``transformer.``),
    ComfyUI/ai-toolkit (``diffusion_model.``), Kohya/musubi-tuner (``lora_unet_layers_0_…``
    with ``.alpha``), on the diffusers modules or the original fused ``attention.qkv`` — through
    diffusers' own Z-Image converter to ``transformer.<module>.lora_A`` keys, alphas folded in.
    LoKr/LoHa/DoRA are refused, not half-read."""
    odd = next((k for k in state if "dora_scale" in k or ".lokr_" in k or ".hada_" in k), None)
    if odd is not None:
        raise ModelError("lora_unsupported_format", name=label, detail=odd[:120])
    try:
        converted = family.pipeline_class("txt2img").lora_state_dict(_split_fused_qkv(state, label))
    except (ValueError, KeyError, IndexError, RuntimeError) as exc:
        log.warning("diffusers cannot convert the Z-Image LoRA %s: %s", label, exc)
        raise ModelError("lora_unsupported_format", name=label, detail=str(exc)[:120]) from exc
    if isinstance(converted, tuple):
        converted = converted[0]
    return dict(converted)


def _first(state: dict, prefixes: tuple[str, ...]) -> str:
    return next(k for k in state if k.startswith(prefixes))[:120]


def _parse_key(key: str, alpha: bool = False) -> tuple[str, str, str] | None:
    """``unet.a.b.to_q.lora_A.weight`` -> ("unet", "a.b.to_q", "down"); None if unknown.
    With ``alpha``, ``key`` is a Kohya alpha's name without ``.alpha``: a module or a down key."""
    component = "unet"  # PAI / bare U-Net files carry no prefix
    for prefix in (*COMPONENTS, "text_encoder_3", "transformer"):
        if key.startswith(prefix + "."):
            component, key = prefix, key[len(prefix) + 1 :]
            break
    key = key.replace(".processor.", ".")
    match = ATTN_LORA.match(key)
    if match:  # an attention processor's LoRA: attn1.to_q_lora.down -> attn1.to_q
        proj = ATTN_PROCESSOR.get(component, ATTN_PROCESSOR["unet"])[match["proj"]]
        path = f"{match['head']}.{proj}" if match["head"] else proj
        return component, path, match["part"]
    for down, up in DOWN_UP:
        for suffix, part in ((down, "down"), (up, "up")):
            if key.endswith(suffix):
                return component, key[: -len(suffix)], part
    return (component, key, "alpha") if alpha else None


def _module_path(model, path: str) -> str | None:
    """The module's name in this model; CLIP files may carry ``text_model.`` or lack it
    (transformers 5 dropped that level)."""
    candidates = [path, path.removeprefix("text_model."), f"text_model.{path}"]
    for candidate in candidates:
        try:
            model.get_submodule(candidate)
            return candidate
        except AttributeError:
            continue
    return None


def _fit(module, down: torch.Tensor, up: torch.Tensor, label: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check (and for 1x1 convolutions reshape) the two matrices against the module."""
    wrong = ModelError("lora_wrong_architecture", name=label, detail=where[:120])
    if down.ndim < 2 or up.ndim < 2 or down.shape[0] != up.shape[1]:
        raise wrong
    if isinstance(module, torch.nn.Linear):
        if down.ndim == 4 and down.shape[2:] == (1, 1) and up.ndim == 4 and up.shape[2:] == (1, 1):
            down, up = down.flatten(1), up.flatten(1)
        if down.ndim != 2 or up.ndim != 2 or down.shape[1] != module.in_features or up.shape[0] != module.out_features:
            raise wrong
    elif isinstance(module, torch.nn.Conv2d):
        if down.ndim == 2 and up.ndim == 2 and module.kernel_size == (1, 1):
            down, up = down[:, :, None, None], up[:, :, None, None]
        if (
            down.ndim != 4 or up.ndim != 4
            or down.shape[1] != module.in_channels or tuple(down.shape[2:]) != tuple(module.kernel_size)
            or up.shape[0] != module.out_channels or tuple(up.shape[2:]) != (1, 1)
        ):
            raise wrong
    else:
        raise wrong
    return down, up


# Writing ------------------------------------------------------------------------------------------
def to_kohya(adapters: dict[str, dict[str, torch.Tensor]], alpha: float, sdxl: bool = False) -> dict[str, torch.Tensor]:
    """peft adapter states ({"unet": ..., "text_encoder": ...}, keys ``<module>.lora_A.weight``)
    in the Kohya/A1111 layout: ``lora_unet_<module_with_underscores>.lora_down.weight``, ``.lora_up``
    and ``.alpha`` — the file A1111, ComfyUI and Danqing's own loader read. ``sdxl``: the text
    encoders as ``lora_te1_``/``lora_te2_`` (the U-Net keeps diffusers' module names, which
    Kohya's SDXL loader and ComfyUI read as well as the LDM ones)."""
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if sdxl else "lora_te_",
                "text_encoder_2": "lora_te2_"}
    out: dict[str, torch.Tensor] = {}
    for component, state in adapters.items():
        for key, value in state.items():
            module, _, part = key.rpartition(".lora_")
            if part not in ("A.weight", "B.weight"):
                continue
            if component != "unet" and not module.startswith("text_model."):
                module = "text_model." + module  # transformers >= 5.6 dropped the wrapper; files keep it
            name = prefixes[component] + module.replace(".", "_")
            out[f"{name}.lora_{'down' if part == 'A.weight' else 'up'}.weight"] = value.detach().float().contiguous().cpu()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out
