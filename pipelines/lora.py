"""LoRA switching on the one shared base model.

Each LoRA file is read once, checked against the base's own modules, and loaded as a named
peft adapter with diffusers' ``load_lora_weights``; after that, a request only calls
``set_adapters`` (or ``disable_lora`` for none), so switching takes milliseconds and never
touches the base weights (Fooocus' rule). A request equal to the last one does nothing.

Why the checks: diffusers skips keys it cannot place with only a log line (keys without a
``unet.``/``text_encoder.`` prefix, another model's components), and a matrix it does not
receive stays at its initial value (``lora_B`` = 0), so a LoRA can load as a silent no-op.
Here every key is mapped to a module of this base before loading, shapes must match, and after
loading each adapter's matrices are compared with the file: anything short of a full match is
an error, and the partial adapter is deleted, so the model stays exactly as it was.

Formats: diffusers/peft (``unet.*.lora_A.weight``; older ``lora.down``/``lora_linear_layer``),
Kohya/A1111 (``lora_unet_*``/``lora_te_*`` with ``.alpha``; converted by diffusers' own
converter), and PAI's attention-processor ``pytorch_lora_weights.bin`` (``*.processor.to_q_lora
.down.weight``, no component prefix: diffusers 0.42 ignores these keys, so they are mapped here).
Kohya alphas are folded into ``lora_B`` (scale alpha/rank) so every adapter runs at scale 1.

The adapter bookkeeping hangs off the base pipeline object (a weak-keyed table): when the store
switches the base model, the old base and its adapters go away together and the new base
starts clean, without any hook in the store.

Hash: ``hash`` in :func:`list_loras` is the first 10 hex digits of the SHA-256 of the whole
file, the short hash A1111 shows for checkpoints and Civitai lists as "AutoV2". (A1111's
``Lora hashes`` infotext uses the "addnet" hash, SHA-256 of the safetensors data after the
header; Civitai finds files by either.)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import pickle
import re
import struct
import time
import weakref
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .errors import ModelError, ParamError
from .folders import _inside
from .params import parse_prompt_loras  # noqa: F401  (re-exported: the engine's LoRA API in one place)

log = logging.getLogger(__name__)

# Adapters kept loaded on one base; the least recently used is deleted beyond this.
MAX_ADAPTERS = 8
TRIGGER_WORDS = 10
HEADER_LIMIT = 100 * 1024 * 1024  # a safetensors JSON header larger than this is not a LoRA
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".preview.png")
FOLDER_WEIGHTS = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")

# Components of an SD 1.x pipeline that take LoRA weights, as named in state-dict prefixes.
COMPONENTS = ("unet", "text_encoder")
# Prefixes of other architectures' components (SDXL, SD3, Flux, ...): refused, never skipped.
FOREIGN_PREFIXES = ("text_encoder_2.", "text_encoder_3.", "transformer.", "lora_te1_", "lora_te2_", "lora_transformer_")
# PAI / diffusers-old attention processors: processor.to_q_lora.down -> the module it adapts.
ATTN_PROCESSOR = {
    "unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    "text_encoder": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}
ATTN_LORA = re.compile(r"^(?:(?P<head>.*)\.)?(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight$")
# Key endings of the two LoRA matrices, in every layout the converters leave behind.
DOWN_UP = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
    (".lora_down.weight", ".lora_up.weight"),
)


# 1. Listing -------------------------------------------------------------------------------
def list_loras(store, with_hash: bool = True) -> list[dict]:
    """The LoRA files in models/lora with what the UI shows about each.

    ``trigger_words`` come from Kohya's ``ss_tag_frequency`` (most frequent first) after
    ``modelspec.trigger_phrase``; ``base_model`` from ``ss_base_model_version``,
    ``ss_sd_model_name`` or ``modelspec.architecture``. ``.bin`` files carry no metadata.
    A file that cannot be read is still listed (it fails with a clear error when used).
    """
    folder = store.folders.folder("lora")
    rows = []
    for name in store.folders.list_files("lora"):
        path = folder / name
        try:
            stat = path.stat()
            digest = _short_hash(str(path), stat.st_size, stat.st_mtime_ns) if with_hash else None
        except OSError:  # removed or unreadable meanwhile: not listed
            continue
        metadata = read_metadata(path)
        rows.append(
            {
                "name": name,
                "hash": digest,
                "trigger_words": trigger_words(metadata),
                "base_model": base_model(metadata),
                "preview": _preview(folder, path),
                "bytes": stat.st_size,
            }
        )
    return rows


@functools.lru_cache(maxsize=1024)
def _short_hash(path: str, size: int, mtime_ns: int) -> str:
    """First 10 hex digits of the file's SHA-256 (cached per path, size and mtime)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header, read without loading any tensor."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > HEADER_LIMIT:
                return {}
            header = json.loads(f.read(length))
        metadata = header.get("__metadata__") or {}
        return {str(k): str(v) for k, v in metadata.items()}
    except (OSError, ValueError, struct.error, AttributeError):
        return {}


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


def _preview(folder: Path, path: Path) -> str | None:
    stem = path.name[: -len(path.suffix)]
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.with_name(stem + suffix)
        if candidate.is_file() and _inside(folder, candidate):
            return str(candidate)
    return None


# 2. Resolving names -----------------------------------------------------------------------
def resolve_lora(store, name: str) -> Path:
    """The file of ``name`` inside models/lora: the listed file itself, the name without its
    extension, a folder holding ``pytorch_lora_weights.*``, or a unique file of that name in a
    sub-folder (A1111 finds ``<lora:x>`` anywhere under the folder). Nothing outside it:
    ``..``, absolute paths and symlinks that leave the folder are refused by ``folders``."""
    folders = store.folders
    try:
        folders.resolve("lora", name)
    except ParamError as exc:  # a malformed name is refused here; a missing one is looked for
        if exc.code != "unknown_model_name":
            raise
    for candidate in (name, f"{name}.safetensors", f"{name}.bin", *(f"{name}/{w}" for w in FOLDER_WEIGHTS)):
        try:
            path = folders.resolve("lora", candidate)
        except ParamError:
            continue
        if path.is_file() and path.suffix.lower() in (".safetensors", ".bin"):
            return path
    matches = [n for n in folders.list_files("lora") if _stem(n.rsplit("/", 1)[-1]) == name]
    if len(matches) == 1:
        return folders.resolve("lora", matches[0])
    raise ParamError("unknown_model_name", kind="lora", name=name[:80])


def _stem(filename: str) -> str:
    return filename.rsplit(".", 1)[0] if "." in filename else filename


# 3. Reading and mapping a file -----------------------------------------------------------
def read_state_dict(path: Path, label: str) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file. Pickles load with ``weights_only=True``: anything but plain
    tensors is refused, never executed."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            log.warning("LoRA %s is not a readable safetensors file: %s", label, exc)
            raise ModelError("lora_file_corrupt", name=label) from exc
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():  # a truncated pickle, not a refused one
            raise ModelError("lora_file_corrupt", name=label) from exc
        log.warning("LoRA %s refused by the safe unpickler: %s", label, exc)
        raise ModelError("lora_unsafe_file", name=label) from exc
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as exc:
        log.warning("LoRA %s is not a readable torch file: %s", label, exc)
        raise ModelError("lora_file_corrupt", name=label) from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelError("lora_unsupported_format", name=label, detail="not a flat dict of tensors")
    return state


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
            if component == "unet":
                downs[f"unet.{path}.lora_A.weight"], ups[f"unet.{path}.lora_B.weight"] = down, up
            else:
                downs[f"text_encoder.{path}.lora_linear_layer.down.weight"] = down
                ups[f"text_encoder.{path}.lora_linear_layer.up.weight"] = up
        return {**downs, **ups}


def map_state_dict(pipe, state: dict[str, torch.Tensor], label: str) -> LoraLayers:
    """Map every key of a LoRA state dict onto a module of ``pipe``, or raise.

    Raises ``lora_unsupported_format`` (keys that are not LoRA matrices: LyCORIS, DoRA, ...),
    ``lora_no_match`` (no key names a module of this model) or ``lora_wrong_architecture``
    (another model's components, modules or shapes).
    """
    from diffusers import StableDiffusionPipeline

    # 1. Kohya/A1111 names go through diffusers' own converter (alphas come back separately).
    alphas: dict[str, float] = {}
    if any(k.startswith(FOREIGN_PREFIXES) for k in state):
        raise ModelError("lora_wrong_architecture", name=label, detail=_first(state, FOREIGN_PREFIXES))
    kohya_layers = 0
    if state and all(k.startswith(("lora_unet_", "lora_te_")) for k in state):
        # LyCORIS (hada_, lokr_), DoRA (dora_scale) and the like: refused, not half-read.
        odd = next((k for k in state if not k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))), None)
        if odd is not None:
            raise ModelError("lora_unsupported_format", name=label, detail=odd[:120])
        kohya_layers = sum(k.endswith(".lora_down.weight") for k in state)
        try:
            state, network_alphas = StableDiffusionPipeline.lora_state_dict(dict(state), unet_config=pipe.unet.config)
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
        if component not in COMPONENTS:
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


def _first(state: dict, prefixes: tuple[str, ...]) -> str:
    return next(k for k in state if k.startswith(prefixes))[:120]


def _parse_key(key: str, alpha: bool = False) -> tuple[str, str, str] | None:
    """``unet.a.b.to_q.lora_A.weight`` -> ("unet", "a.b.to_q", "down"); None if unknown.
    With ``alpha``, ``key`` is a Kohya alpha's name without ``.alpha``: a module or a down key."""
    component = "unet"  # PAI / bare U-Net files carry no prefix
    for prefix in (*COMPONENTS, "text_encoder_2", "text_encoder_3", "transformer"):
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


# 4. The adapters on one base --------------------------------------------------------------
@dataclass
class _Adapters:
    """What is loaded on one base pipeline, and what is switched on."""

    loaded: OrderedDict = field(default_factory=OrderedDict)  # file identity -> adapter name, LRU order
    active: tuple = ()  # ((adapter name, weight), ...) as last set; () = LoRA off
    enabled: bool = False  # enable_lora is in force on every layer (a load or disable_lora clears it)
    counter: int = 0
    loads: int = 0  # files loaded on this base (tests and the benchmark read it)


_ADAPTERS: "weakref.WeakKeyDictionary[object, _Adapters]" = weakref.WeakKeyDictionary()


def adapters_of(base) -> _Adapters:
    """The bookkeeping of ``base``: created with it, gone with it (store.switch frees it)."""
    state = _ADAPTERS.get(base)
    if state is None:
        state = _ADAPTERS[base] = _Adapters()
    return state


def apply_loras(store, loras: Sequence[tuple[str, float]]) -> None:
    """Make exactly ``loras`` active on the store's base; () turns LoRA off. Runs inside
    ``store.lock`` before denoising. On any error the previous state stays in force."""
    if loras and store.settings.fuse_qkv:
        # Fused Q/K/V projections bypass the adapters on to_q/to_k/to_v: refuse, never ignore.
        raise ParamError("lora_needs_unfused_qkv")
    with store.lock:
        base = store.base()
        state = adapters_of(base)
        # 1. Resolve names to files (a name given twice keeps its last weight); weight 0 is off.
        wanted: OrderedDict[tuple, tuple[Path, float, str]] = OrderedDict()
        for name, weight in loras:
            path = resolve_lora(store, name)
            stat = path.stat()
            identity = (str(path), stat.st_size, stat.st_mtime_ns)
            wanted.pop(identity, None)
            wanted[identity] = (path, float(weight), name)
        wanted = OrderedDict((k, v) for k, v in wanted.items() if v[1] != 0.0)
        # 2. The same request as last time: nothing to do.
        if all(k in state.loaded for k in wanted):
            target = tuple((state.loaded[k], v[1]) for k, v in wanted.items())
            if target == state.active:
                for k in wanted:
                    state.loaded.move_to_end(k)
                return
        try:
            # 3. Load what is missing (each verified; a failed one leaves nothing behind).
            for identity, (path, _, name) in wanted.items():
                if identity not in state.loaded:
                    state.loaded[identity] = _load(base, state, path, name)
                state.loaded.move_to_end(identity)
            # 4. Switch: set_adapters for the wanted ones, disable_lora for none.
            target = tuple((state.loaded[k], v[1]) for k, v in wanted.items())
            _activate(base, state, target)
        except Exception:
            _activate(base, state, state.active, force=True)  # a load may have changed what is active
            raise
        # 5. Only now evict the least recently used beyond the bound (inactive, so no output
        # changes), so a failed request never cost an adapter the previous state used.
        _evict(base, state, keep=set(wanted))


def _activate(base, state: _Adapters, target: tuple, force: bool = False) -> None:
    if target == state.active and not force:
        return
    if not state.loaded:
        state.active = ()
        return
    if target:
        names, weights = [n for n, _ in target], [w for _, w in target]
        base.set_adapters(names, weights)
        if not state.enabled:  # after disable_lora, or new layers from a load
            base.enable_lora()
            state.enabled = True
    else:
        base.disable_lora()
        state.enabled = False
    state.active = target


def _evict(base, state: _Adapters, keep: set) -> None:
    while len(state.loaded) > MAX_ADAPTERS:
        victim = next((k for k in state.loaded if k not in keep), None)
        if victim is None:
            return
        name = state.loaded.pop(victim)
        log.info("evicting LoRA %s (%s) from the base", Path(victim[0]).name, name)
        base.delete_adapters([name])


def _load(base, state: _Adapters, path: Path, label: str) -> str:
    """Read, map, load as a new adapter and verify; on failure nothing of it stays."""
    started = time.perf_counter()
    # 1. Read and map onto this base (errors here leave the model untouched).
    tensors = read_state_dict(path, label)
    mapped = map_state_dict(base, tensors, label)
    state.counter += 1
    name = f"lora{state.counter}"
    state.enabled = False  # newly wrapped layers start enabled, older ones may be disabled
    # 2. Load with diffusers and check that every matrix arrived.
    try:
        base.load_lora_weights(mapped.diffusers_state_dict(), adapter_name=name)
        _verify(base, name, mapped, label)
    except Exception as exc:
        _remove(base, name)
        if isinstance(exc, ModelError):
            raise
        log.exception("loading LoRA %s failed", label)
        raise ModelError("lora_load_failed", name=label) from exc
    state.loads += 1
    log.info("loaded LoRA %s as %s: %d layers in %.3fs", label, name, len(mapped.layers), time.perf_counter() - started)
    return name


def _verify(base, name: str, mapped: LoraLayers, label: str) -> None:
    """Every mapped module got this adapter with the file's exact matrices at scale 1."""
    for (component, path), (down, up) in mapped.layers.items():
        layer = getattr(base, component).get_submodule(path)
        lora_a, lora_b = getattr(layer, "lora_A", {}), getattr(layer, "lora_B", {})
        if name not in lora_a or name not in lora_b:
            raise ModelError("lora_load_failed", name=label, detail=f"{component}.{path} not adapted")
        a, b = lora_a[name].weight, lora_b[name].weight
        if not (
            torch.equal(a, down.to(a.device, a.dtype).reshape(a.shape))
            and torch.equal(b, up.to(b.device, b.dtype).reshape(b.shape))
            and layer.scaling.get(name) == 1.0
        ):
            raise ModelError("lora_load_failed", name=label, detail=f"{component}.{path} differs")


def _remove(base, name: str) -> None:
    """Delete adapter ``name`` wherever it got to (unet, text encoder, or neither)."""
    if not any(name in getattr(getattr(base, c), "peft_config", {}) for c in COMPONENTS):
        return
    try:
        base.delete_adapters([name])
    except Exception:  # the original error matters more; log and keep going
        log.exception("could not delete the partial adapter %s", name)


# 5. Demo LoRAs ---------------------------------------------------------------------------
DEMO_LORAS = {
    "peft": "danqing-demo-peft.safetensors",
    "kohya": "danqing-demo-kohya.safetensors",
    "pai": "pai-poem-tiny/pytorch_lora_weights.bin",
}
DEMO_TAGS = {"shuimo": 14, "ink wash painting": 11, "bamboo": 6, "panda": 3}


def save_demo_loras(root: Path) -> dict[str, Path]:
    """Tiny LoRAs for the demo base (``checkpoints/<DEMO_MODEL>``), one per format, built from
    its own module names and shapes with seeded random weights (large enough to change every
    image): diffusers/peft safetensors with text-encoder layers, Kohya safetensors with
    ``.alpha``, conv (LoCon) layers and ``ss_*`` metadata plus a preview image, and PAI's
    attention-processor ``pytorch_lora_weights.bin`` in a folder."""
    from diffusers import UNet2DConditionModel
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from .demo import DEMO_MODEL

    # 1. The demo base's modules: attention projections, feed-forwards, convolutions.
    base = Path(root) / "checkpoints" / DEMO_MODEL
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder")
    attention = [(n, m) for n, m in unet.named_modules() if ".attn" in n and isinstance(m, torch.nn.Linear)]
    te_layers = [(n, m) for n, m in text_encoder.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    extra = [
        (n, m) for n, m in unet.named_modules()
        if n.endswith(("ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "resnets.0.conv1"))
    ]
    folder = Path(root) / "lora"
    written = {kind: folder / rel for kind, rel in DEMO_LORAS.items()}

    def pair(module, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(module, torch.nn.Conv2d):
            down_shape = (rank, module.in_channels, *module.kernel_size)
            up_shape = (module.out_channels, rank, 1, 1)
        else:
            down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
        return (
            (torch.randn(down_shape, generator=generator) * 0.3).contiguous(),
            (torch.randn(up_shape, generator=generator) * 0.3).contiguous(),
        )

    # 2. diffusers/peft: U-Net attention and the whole text encoder, rank 4.
    g = torch.Generator().manual_seed(101)
    state = {}
    for prefix, layers in (("unet", attention), ("text_encoder", te_layers)):
        for name, module in layers:
            down, up = pair(module, 4, g)
            state[f"{prefix}.{name}.lora_A.weight"], state[f"{prefix}.{name}.lora_B.weight"] = down, up
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, written["peft"], metadata={"format": "pt"})

    # 3. Kohya: lora_unet_/lora_te_ names (CLIP's "text_model." level included, as sd-scripts
    # writes it), alpha = rank / 2, conv layers, and the ss_* metadata the UI reads.
    g = torch.Generator().manual_seed(202)
    state = {}
    for prefix, layers in (("lora_unet_", attention + extra), ("lora_te_text_model_", te_layers)):
        for name, module in layers:
            key = prefix + name.replace(".", "_")
            down, up = pair(module, 4, g)
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
            state[f"{key}.alpha"] = torch.tensor(2.0)
    metadata = {
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": DEMO_MODEL,
        "ss_network_module": "networks.lora",
        "ss_network_dim": "4",
        "ss_network_alpha": "2.0",
        "ss_output_name": "danqing-demo-kohya",
        "ss_tag_frequency": json.dumps({"10_shuimo": DEMO_TAGS}),
    }
    save_file(state, written["kohya"], metadata=metadata)
    preview = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    preview.save(written["kohya"].with_suffix(".png"))

    # 4. PAI: attention processors' to_q_lora/to_k_lora/... (U-Net only), a pickled .bin.
    g = torch.Generator().manual_seed(303)
    state = {}
    for name, module in attention:
        head, _, proj = name.removesuffix(".0").rpartition(".")  # to_out.0 -> to_out
        down, up = pair(module, 4, g)
        key = f"{head}.processor.{proj}_lora"
        state[f"{key}.down.weight"], state[f"{key}.up.weight"] = down, up
    written["pai"].parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, written["pai"])
    return written
