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

The store owns the table of loaded adapters (store/adapters.py): 系统信息 lists them with their
bytes and the cache budget counts them; when the store switches the base model, the old base
and its table go away together and the new base starts clean. Reading files and mapping keys
is formats/lora.py; this module decides what to load and switch.

Hash: ``hash`` in :func:`list_loras` is the first 10 hex digits of the SHA-256 of the whole
file, the short hash A1111 shows for checkpoints and Civitai lists as "AutoV2". (A1111's
``Lora hashes`` infotext uses the "addnet" hash, SHA-256 of the safetensors data after the
header; Civitai finds files by either.)
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ModelError, ParamError
from ..formats.cards import read_card
from ..formats.weights import short_hash
from ..formats import fewstep
from ..formats.lora import COMPONENTS, LoraLayers, base_model, context_width, map_state_dict, read_header, read_state_dict, trigger_words
from ..store.adapters import MAX_ADAPTERS, AdapterTable, adapter_bytes
from ..store.folders import inside

log = logging.getLogger(__name__)

PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".preview.png")
FOLDER_WEIGHTS = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")


# 1. Listing -------------------------------------------------------------------------------
def list_loras(store, with_hash: bool = True) -> list[dict]:
    """The LoRA files in models/lora with what the UI shows about each.

    ``trigger_words`` come from Kohya's ``ss_tag_frequency`` (most frequent first) after
    ``modelspec.trigger_phrase``; ``base_model`` from ``ss_base_model_version``,
    ``ss_sd_model_name`` or ``modelspec.architecture``. ``.bin`` files carry no metadata. A
    model card beside the file (A1111's ``.json``, Civitai Helper's ``.civitai.info``:
    formats/cards.py) adds its trigger words, description, title and preferred weight.
    A file that cannot be read is still listed (it fails with a clear error when used).
    """
    rows = []
    for name in store.folders.list_files("lora"):
        try:
            path = store.folders.resolve("lora", name)
            stat = path.stat()
            digest = short_hash(str(path), stat.st_size, stat.st_mtime_ns) if with_hash else None
        except (OSError, ParamError):  # removed or unreadable meanwhile: not listed
            continue
        metadata, keys = read_header(path)
        card = read_card(path)
        rows.append(
            {
                "name": name,
                "hash": digest,
                # The card's words (what its author or Civitai lists) first, then Kohya's.
                "trigger_words": list(dict.fromkeys([*card.get("trigger_words", ()), *trigger_words(metadata)])),
                "base_model": base_model(metadata) or card.get("base_model"),
                "preview": _preview(path.parent, path),
                "bytes": stat.st_size,
                "description": card.get("description", ""),
                "title": card.get("title", ""),
                "preferred_weight": card.get("preferred_weight"),
                # A few-step LoRA (LCM, TCD, Hyper-SD): its method and published settings.
                "fewstep": (found.as_dict() if (found := fewstep.recognise_lora(name, metadata, keys, card)) else None),
                # The U-Net context it was made for (768/1024 SD 1.x/2.x, 2048 SDXL; None: cannot tell).
                "context_width": context_width(path),
            }
        )
    return rows


def _preview(folder: Path, path: Path) -> str | None:
    stem = path.name[: -len(path.suffix)]
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.with_name(stem + suffix)
        if candidate.is_file() and inside(folder, candidate):
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


def tag_name(name: str, listed: Sequence[str]) -> str:
    """The name a ``<lora:…>`` tag (and ``Lora hashes``) gives a LoRA, as A1111 and Civitai read
    it: the file's name without its ending, or the relative path without the ending when
    another listed file has the same name. ``resolve_lora`` finds the file from either."""
    path = name
    for ending in (".safetensors", ".bin"):
        if path.lower().endswith(ending):
            path = path[: -len(ending)]
            break
    stem = path.rsplit("/", 1)[-1]
    if stem.lower() == "pytorch_lora_weights" and "/" in path:
        return path.rsplit("/", 1)[0]  # a diffusers folder's file: the folder names the LoRA
    same = [n for n in listed if _stem(n.rsplit("/", 1)[-1]) == stem]
    return stem if len(same) <= 1 else path





def apply_loras(store, loras: Sequence[tuple[str, float]]) -> None:
    """Make exactly ``loras`` active on the store's base; () turns LoRA off. Runs inside the
    job (which holds the GPU lock) before denoising. On any error the previous state stays in
    force."""
    if loras and store.settings.fuse_qkv:
        # Fused Q/K/V projections bypass the adapters on to_q/to_k/to_v: refuse, never ignore.
        raise ParamError("lora_needs_unfused_qkv")
    base = store.base()
    state = store.adapters
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


def restore_active(store, target: tuple) -> None:
    """Switch exactly ``target`` (an ``adapters.active`` value saved earlier) back on, whatever
    happened to the adapters meanwhile (a training run adds and deletes its own)."""
    _activate(store.base(), store.adapters, target, force=True)


def _activate(base, state: AdapterTable, target: tuple, force: bool = False) -> None:
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


def _evict(base, state: AdapterTable, keep: set) -> None:
    while len(state.loaded) > MAX_ADAPTERS:
        victim = next((k for k in state.loaded if k not in keep), None)
        if victim is None:
            return
        name = state.forget(victim)
        log.info("evicting LoRA %s (%s) from the base", Path(victim[0]).name, name)
        base.delete_adapters([name])


def _load(base, state: AdapterTable, path: Path, label: str) -> str:
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
    state.sizes[name] = adapter_bytes(base, name)
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
    if not any(name in getattr(getattr(base, c, None), "peft_config", {}) for c in COMPONENTS):
        return
    try:
        base.delete_adapters([name])
    except Exception:  # the original error matters more; log and keep going
        log.exception("could not delete the partial adapter %s", name)


