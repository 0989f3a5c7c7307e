"""The model store: the single owner of loaded weights.

It holds exactly one base pipeline (one U-Net, one VAE, one text encoder) and hands out task
pipelines built from it with ``from_pipe``, which share those modules instead of copying them.
Loading is lazy and happens once, under a lock; switching the base model loads the new one
first (so a failure keeps the old one active) and then frees the old one.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .devices import DevicePlan, attention_backend, dtype_name, plan_device
from .errors import ModelError, ParamError
from .folders import ModelFolders
from .settings import KNOWN_HUB_MODELS, EngineSettings

log = logging.getLogger(__name__)

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


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model dropdown."""

    ref: str  # what the user picks: a folder name under models/checkpoints, or a hub id
    source: str  # the local path or hub id handed to from_pretrained
    local: bool  # files are on this machine (folder, or hub cache)
    kind: str  # "folder" | "hub" | "path"


def _module_bytes(module) -> int:
    if isinstance(module, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    return int(getattr(module, "nbytes", 0))


class ResidentCache:
    """Models loaded next to the base (ControlNets, upscalers, depth estimators, ...): loaded
    lazily once per (kind, name), kept while they fit a byte budget, least recently used
    evicted first. The caller holds the store lock."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[tuple[str, str], tuple[object, int]] = OrderedDict()

    def get(self, kind: str, name: str, load: Callable[[], object]):
        key = (kind, name)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        model = load()
        size = _module_bytes(model)
        self._items[key] = (model, size)
        self._evict(keep=key)
        return model

    def _evict(self, keep: tuple[str, str]) -> None:
        while self.total_bytes() > self.budget_bytes and len(self._items) > 1:
            oldest = next(iter(self._items))
            if oldest == keep:
                self._items.move_to_end(keep)
                continue
            log.info("evicting %s/%s from the model cache", *oldest)
            del self._items[oldest]

    def drop(self, kind: str | None = None) -> None:
        for key in [k for k in self._items if kind is None or k[0] == kind]:
            del self._items[key]

    def total_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def rows(self) -> list[dict]:
        return [
            {"name": name, "kind": kind, "bytes": size}
            for (kind, name), (_, size) in self._items.items()
        ]


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)
    except Exception:  # a broken cache must not break the model list
        return False


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


class ModelStore:
    """Owns the base pipeline and everything loaded next to it. Pass it explicitly."""

    def __init__(self, settings: EngineSettings, folders: ModelFolders | None = None) -> None:
        self.settings = settings
        self.folders = folders or ModelFolders(Path(settings.models_dir))
        quiet_false_fp32_warning()
        self.plan: DevicePlan = plan_device(settings.device, settings.dtype)
        # Re-entrant: a job holds it while it runs, and loads inside the job take it again.
        self.lock = threading.RLock()
        self._base = None
        self._base_ref: str | None = None
        self._wanted_ref = settings.model
        self._load_seconds: float | None = None
        # ControlNets, upscalers, annotators: 4 GiB by default (a few SD 1.5 ControlNets in fp16).
        self.cache = ResidentCache(settings.cache_budget_bytes)

    # 1. What can be loaded -------------------------------------------------------------
    def model_choices(self) -> list[ModelChoice]:
        choices: dict[str, ModelChoice] = {}
        configured = self.settings.model
        for name in self.folders.list_diffusers_dirs("checkpoints", "model_index.json"):
            path = str(self.folders.folder("checkpoints") / name)
            choices[name] = ModelChoice(name, path, True, "folder")
        if configured not in choices and (Path(configured) / "model_index.json").is_file():
            # A path given on the command line (never from the UI or API: those pick from this list).
            choices[configured] = ModelChoice(configured, configured, True, "path")
        if not self.settings.demo:
            hub_ids = [configured] if HUB_ID.match(configured) else []
            for repo in (*hub_ids, *KNOWN_HUB_MODELS):
                if repo not in choices:
                    choices[repo] = ModelChoice(repo, repo, _hub_cached(repo), "hub")
        return list(choices.values())

    def choice(self, ref: str) -> ModelChoice:
        for c in self.model_choices():
            if c.ref == ref:
                return c
        raise ParamError("unknown_model", name=str(ref)[:100])

    @property
    def current_ref(self) -> str:
        return self._base_ref or self._wanted_ref

    def is_loaded(self) -> bool:
        return self._base is not None

    # 2. Loading ------------------------------------------------------------------------
    def base(self):
        """The base pipeline, loaded on first use. Once loaded no lock is taken, so readers
        (系统信息, progress) never wait behind a running job."""
        base = self._base
        if base is not None:
            return base
        with self.lock:
            if self._base is None:
                self._base = self._load(self.choice(self._wanted_ref))
                self._base_ref = self._wanted_ref
            return self._base

    def switch(self, ref: str):
        """Make ``ref`` the base model. On failure the previous model stays active."""
        with self.lock:
            choice = self.choice(ref)
            if self._base is not None and ref == self._base_ref:
                return self._base
            new = self._load(choice)
            old, self._base = self._base, new
            self._base_ref = self._wanted_ref = ref
            del old
            self._free_memory()
            return new

    def _load(self, choice: ModelChoice):
        from diffusers import StableDiffusionPipeline

        started = time.perf_counter()
        kwargs = dict(
            dtype=self.plan.dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
        try:
            if choice.kind == "hub" and not choice.local:
                if not self.settings.allow_download:
                    raise ModelError("model_missing_offline", name=choice.ref)
                log.info("downloading %s (HF_ENDPOINT honoured)", choice.ref)
                try:
                    pipe = StableDiffusionPipeline.from_pretrained(choice.source, **kwargs)
                except OSError as exc:
                    log.warning("download of %s failed: %s", choice.ref, exc)
                    raise ModelError("model_download_failed", name=choice.ref) from exc
            else:
                pipe = StableDiffusionPipeline.from_pretrained(
                    choice.source, local_files_only=True, **kwargs
                )
        except ModelError:
            raise
        except Exception as exc:  # any loader failure is a user-facing "cannot load" error
            log.exception("loading %s failed", choice.ref)
            text = str(exc).lower()
            code = "model_file_corrupt" if ("deserializ" in text or "header" in text or "corrupt" in text or "unexpected eof" in text) else "model_load_failed"
            raise ModelError(code, name=choice.ref) from exc
        if self.plan.device.type != "cpu":
            pipe.to(self.plan.device)
        apply_speed_options(pipe, self.settings)
        self._load_seconds = time.perf_counter() - started
        log.info("loaded %s in %.1fs on %s/%s", choice.ref, self._load_seconds, self.plan.device, dtype_name(self.plan.dtype))
        return pipe

    def _free_memory(self) -> None:
        gc.collect()
        if self.plan.device.type == "cuda":
            torch.cuda.empty_cache()

    # 3. Task pipelines -----------------------------------------------------------------
    def pipeline(self, cls=None, **components):
        """A task pipeline sharing the base modules (``from_pipe``: no weights are copied)."""
        base = self.base()
        if cls is None or (cls is type(base) and not components):
            return base
        # from_pipe casts every module to its `dtype` argument, float32 when none is given: name
        # the store's dtype so the shared fp16 weights stay fp16, and keep a VAE that was
        # upcast after a NaN decode (common.decode_latents) in fp32.
        vae_dtype = base.vae.dtype
        pipe = cls.from_pipe(base, dtype=self.plan.dtype, **components)
        if base.vae.dtype != vae_dtype:
            base.vae.to(vae_dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def preview_decoder(self):
        """How live previews are decoded (``settings.preview``): a function of the latents, or
        None when previews are off. A tiny decoder from models/vae-approx is loaded once into
        the cache; without one, "auto" and "taesd" use the linear approximation."""
        from functools import partial

        from .preview import approx_decode, load_tiny_decoder, tiny_decode

        method = self.settings.preview
        if method == "off":
            return None
        if method in ("auto", "taesd"):
            names = self.folders.list_diffusers_dirs("vae_approx", "config.json")
            if names:
                folder = self.folders.folder("vae_approx") / names[0]
                decoder = self.cache.get("preview_decoder", names[0],
                                         lambda: load_tiny_decoder(folder, self.plan.device, self.plan.dtype))
                return partial(tiny_decode, decoder)
            if method == "taesd":
                log.warning("no tiny decoder in %s; previews use the linear approximation",
                            self.folders.folder("vae_approx"))
        return approx_decode

    # 4. What is resident ---------------------------------------------------------------
    def resident_models(self) -> list[dict]:
        rows = []
        if self._base is None:
            return rows + self.cache.rows()
        for name in ("unet", "vae", "text_encoder"):
            module = getattr(self._base, name)
            rows.append(
                {
                    "name": f"{self._base_ref}/{name}",
                    "kind": name,
                    "bytes": _module_bytes(module),
                    "device": str(next(module.parameters()).device),
                    "dtype": dtype_name(next(module.parameters()).dtype),
                }
            )
        return rows + self.cache.rows()

    def system_info(self) -> dict:
        info = {
            "model": self.current_ref,
            "model_loaded": self._base is not None,
            "device": str(self.plan.device),
            "dtype": dtype_name(self.plan.dtype),
            "attention": attention_backend(self._base.unet) if self._base is not None else "sdpa",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "demo": self.settings.demo,
            "speed_options": {
                "attention": self.settings.attention, "channels_last": self.settings.channels_last,
                "fuse_qkv": self.settings.fuse_qkv, "vae_tiling": self.settings.vae_tiling,
                "compile": self.settings.compile,
            },
            "resident": self.resident_models(),
            "load_seconds": round(self._load_seconds, 2) if self._load_seconds else None,
        }
        if self.plan.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.plan.device)
            info["gpu_allocated_bytes"] = torch.cuda.memory_allocated(self.plan.device)
        return info
