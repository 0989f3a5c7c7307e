"""The model store: the single owner of loaded weights.

It holds exactly one base pipeline (one U-Net, one VAE, one text encoder) and hands out task
pipelines built from it with ``from_pipe``, which share those modules instead of copying them.
Loading is lazy and happens once, under a lock; switching the base model loads the new one
first (so a failure keeps the old one active) and then frees the old one.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError, ParamError
from ..formats import zimage_files
from ..formats.checkpoint import load_single_file, load_vae, vae_latent_channels
from ..formats.embeddings import Embedding, read_embedding
from ..formats.families import SD1, ModelFamily, family_of_index, family_of_pipeline
from ..formats.weights import file_hash
from . import memory
from .adapters import AdapterTable
from .cache import ResidentCache, module_bytes
from .devices import DevicePlan, attention_backend, dtype_name, free_memory, is_oom, plan_device
from .folders import ModelFolders
from .quiet import quiet_known_noise
from .settings import KNOWN_HUB_MODELS, EngineSettings
from .speed import apply_speed_options

log = logging.getLogger(__name__)


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model dropdown."""

    ref: str  # what the user picks: a folder name under models/checkpoints, or a hub id
    source: str  # the local path or hub id handed to from_pretrained
    local: bool  # files are on this machine (folder, or hub cache)
    kind: str  # "folder" | "file" (an A1111 single file) | "hub" | "path"


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)
    except Exception:  # a broken cache must not break the model list
        return False


def _know_latents(pipe) -> None:
    """Tell the pipeline's image processor its VAE's latent width: Z-Image's pipelines build
    theirs with the 4-channel default, so 16-channel latents handed in as ``image`` (高清修复's
    latent upscale) would be taken for a picture and resized."""
    processor, vae = getattr(pipe, "image_processor", None), getattr(pipe, "vae", None)
    if processor is None or vae is None or "vae_latent_channels" not in processor.config:
        return
    if processor.config.vae_latent_channels != vae.config.latent_channels:
        processor.register_to_config(vae_latent_channels=vae.config.latent_channels)


class ModelStore:
    """Owns the base pipeline and everything loaded next to it. Pass it explicitly."""

    def __init__(self, settings: EngineSettings, folders: ModelFolders | None = None) -> None:
        self.settings = settings
        self.folders = folders or ModelFolders(Path(settings.models_dir), settings.extra_model_dirs)
        quiet_known_noise()
        self.plan: DevicePlan = plan_device(settings.device, settings.dtype)
        # Re-entrant: a job holds it while it runs, and loads inside the job take it again.
        self.lock = threading.RLock()
        self._base = None
        self._base_ref: str | None = None
        self._family: ModelFamily = SD1  # the loaded base's family (formats/families.py), set at load
        self._wanted_ref = settings.model
        self._load_seconds: float | None = None
        self.model_hash: str | None = None  # A1111's short hash of the loaded single file
        self.split_files: dict | None = None  # a split Z-Image's three files (系统信息 names them)
        self.memory: dict | None = None  # how the base sits in GPU memory (store/memory.py)
        # The external VAE: what was asked ("auto", "none" or a name under models/vae) and what
        # is applied (a name, or None for the model's own, kept in _own_vae to switch back to).
        self._wanted_vae = settings.vae
        self.vae_ref: str | None = None
        self.vae_hash: str | None = None
        self._own_vae = None
        self._embeddings: dict[tuple, Embedding] = {}  # read files, by (path, size, mtime, width)
        # The LoRA adapters on the current base (a new table with every base loaded).
        self.adapters = AdapterTable()
        # ControlNets, upscalers, annotators: 4 GiB by default (a few SD 1.5 ControlNets in fp16),
        # shared with the LoRA adapters.
        self.cache = ResidentCache(settings.cache_budget_bytes, other_bytes=lambda: self.adapters.total_bytes())

    # 1. What can be loaded -------------------------------------------------------------
    def model_choices(self) -> list[ModelChoice]:
        choices: dict[str, ModelChoice] = {}
        configured = self.settings.model
        for name in self.folders.list_diffusers_dirs("checkpoints", "model_index.json"):
            path = str(self.folders.resolve("checkpoints", name))
            choices[name] = ModelChoice(name, path, True, "folder")
        for name in self.folders.list_single_files("checkpoints"):
            if name not in choices:
                path = str(self.folders.resolve("checkpoints", name))
                choices[name] = ModelChoice(name, path, True, "file")
        for name in self.folders.list_files("diffusion_models"):
            if name not in choices:  # ComfyUI's split Z-Image: the transformer file is the model
                choices[name] = ModelChoice(name, str(self.folders.resolve("diffusion_models", name)), True, "split")
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

    @property
    def vae_choice(self) -> str:
        """The external VAE asked for: "auto", "none" or a name under models/vae."""
        return self._wanted_vae

    @property
    def family(self) -> ModelFamily:
        """The base model's family (loading the base first when it is not yet loaded)."""
        self.base()
        return self._family

    @property
    def loaded_family(self) -> ModelFamily | None:
        """The family of the loaded base, or None (never loads)."""
        return self._family if self._base is not None else None

    def denoiser(self):
        """The base model's denoiser: its U-Net, or Z-Image's transformer (loads the base)."""
        return self.family.denoiser_of(self.base())

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
                self._bring(self.choice(self._wanted_ref))
            return self._base

    def select(self, ref: str) -> None:
        """Make ``ref`` the model to use without loading it here (a Ray front process: the
        replicas load it with their next job)."""
        self.choice(ref)
        with self.lock:
            self._wanted_ref = ref

    def switch(self, ref: str):
        """Make ``ref`` the base model. It is read into memory first (a failure there keeps the
        previous model active), then the previous one leaves the GPU and the new one takes its
        place — so an SDXL and a Z-Image never need the GPU at the same time. Should placing
        the new one fail (out of GPU memory), the previous model is loaded back."""
        with self.lock:
            choice = self.choice(ref)
            if self._base is not None and ref == self._base_ref:
                return self._base
            new, split = self._load(choice)
            previous = self._base_ref if self._base is not None else None
            self._release()
            try:
                placed = self._place(new)
            except Exception as exc:
                log.exception("placing %s on %s failed", ref, self.plan.device)
                del new
                free_memory(self.plan.device)
                self._restore(previous)
                raise ModelError("out_of_memory" if is_oom(exc) else "model_load_failed", name=ref) from exc
            self._adopt(new, choice, split, placed)
            return new

    def _release(self) -> None:
        """Let the current base go (and what only it used: its LoRA adapters, Z-Image
        ControlNets bound to its transformer), and give its GPU memory back."""
        if self._base is not None and self._family.denoiser != "unet":
            self.cache.drop("controlnet")
        self._base, self._own_vae = None, None
        self.adapters = AdapterTable()
        free_memory(self.plan.device)

    def _bring(self, choice: ModelChoice) -> None:
        """Read, place and adopt ``choice`` as the base (no base held before)."""
        pipe, split = self._load(choice)
        self._adopt(pipe, choice, split, self._place(pipe))

    def _restore(self, ref: str | None) -> None:
        """Load ``ref`` back after a failed switch (logged when even that fails)."""
        if ref is None:
            return
        try:
            self._bring(self.choice(ref))
        except Exception:  # the switch's own error is the one the user reads
            log.exception("could not load %s back", ref)

    def _adopt(self, pipe, choice: ModelChoice, split: dict | None = None, placed: dict | None = None) -> None:
        """Make a freshly loaded and placed pipeline the base: its A1111 hash (a single file's
        short hash, cached by path, size and mtime), a split model's three files, its memory
        mode, its own VAE kept, the chosen external VAE applied."""
        self._base, self._base_ref = pipe, choice.ref
        self._family = family_of_pipeline(pipe)
        self.memory, self.split_files = placed, split
        self._wanted_ref = choice.ref
        self.model_hash = file_hash(Path(choice.source)) if choice.kind in ("file", "split") else None
        self._own_vae, self.vae_ref, self.vae_hash = pipe.vae, None, None
        self._apply_vae(self._wanted_vae, quiet=True)

    def _local_tokenizer(self, folders: list[Path], fits) -> object | None:
        """The first tokenizer among ``folders`` that loads and ``fits(tokenizer)``; None."""
        from transformers import AutoTokenizer

        for folder in folders:
            try:
                tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            except Exception:  # no tokenizer there, or an unreadable one: try the next
                continue
            if fits(tokenizer):
                log.info("tokenizer from %s", folder)
                return tokenizer
        return None

    def _checkpoint_tokenizers(self) -> list[Path]:
        return [self.folders.resolve("checkpoints", n) / "tokenizer"
                for n in self.folders.list_diffusers_dirs("checkpoints", "model_index.json")]

    def _tokenizer_for(self, vocab_size: int):
        """The tokenizer of an installed diffusers model with ``vocab_size`` tokens (a PAI
        single file carries no tokenizer, but its BERT vocabulary is that of the PAI folder)."""
        return self._local_tokenizer(self._checkpoint_tokenizers(), lambda t: len(t) == vocab_size)

    def _qwen_tokenizer(self, rows: int):
        """Qwen's tokenizer for a split Qwen3 text encoder with ``rows`` embedding rows: an
        installed Z-Image folder's, else a Qwen instruct model's in models/prompters (Qwen2.5 and
        Qwen3 share the vocabulary); None when there is none."""
        prompters = [self.folders.resolve("prompters", n) for n in self.folders.list_diffusers_dirs("prompters", "config.json")]
        return self._local_tokenizer(self._checkpoint_tokenizers() + prompters,
                                     lambda t: "<|im_start|>" in t.get_vocab() and len(t) <= rows)  # its ids fit

    def _kind_paths(self, kind: str) -> list[Path]:
        return [self.folders.resolve(kind, name) for name in self.folders.list_files(kind)]

    def _folder_family(self, choice: ModelChoice) -> ModelFamily:
        """A diffusers folder's (or hub model's) family, from its ``model_index.json``."""
        import json

        index = None
        if choice.kind in ("folder", "path"):
            index = Path(choice.source) / "model_index.json"
        else:
            try:
                from huggingface_hub import hf_hub_download

                index = Path(hf_hub_download(choice.source, "model_index.json",
                                             local_files_only=not self.settings.allow_download))
            except Exception:  # unknown here: the loader's own error says why
                return SD1
        try:
            return family_of_index(json.loads(index.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return SD1

    def _load(self, choice: ModelChoice):
        """Read ``choice`` into memory (the CPU): (pipeline, a split model's files or None)."""
        started = time.perf_counter()
        split = None
        kwargs: dict = dict(dtype=self.plan.dtype)
        if choice.kind not in ("file", "split"):
            cls = self._folder_family(choice).pipeline_class("txt2img")
            if "safety_checker" in inspect.signature(cls.__init__).parameters:
                kwargs.update(safety_checker=None, requires_safety_checker=False)
        try:
            if choice.kind == "hub" and not choice.local:
                if not self.settings.allow_download:
                    raise ModelError("model_missing_offline", name=choice.ref)
                log.info("downloading %s (HF_ENDPOINT honoured)", choice.ref)
                try:
                    pipe = cls.from_pretrained(choice.source, **kwargs)
                except OSError as exc:
                    log.warning("download of %s failed: %s", choice.ref, exc)
                    raise ModelError("model_download_failed", name=choice.ref) from exc
            elif choice.kind == "file":
                pipe = load_single_file(Path(choice.source), self.plan.dtype, self._tokenizer_for)
            elif choice.kind == "split":
                pipe, split = zimage_files.assemble(
                    Path(choice.source), self._kind_paths("text_encoders"), self._kind_paths("vae"), self.plan.dtype,
                    self._qwen_tokenizer)
            else:
                pipe = cls.from_pretrained(choice.source, local_files_only=True, **kwargs)
        except ModelError:
            raise
        except Exception as exc:  # any loader failure is a user-facing "cannot load" error
            log.exception("loading %s failed", choice.ref)
            if choice.kind in ("folder", "path") and memory.svdquant_config(choice.source) is not None:
                # Nunchaku's 4-bit SVDQuant: CUDA, a non-Hopper NVIDIA GPU and the kernels package
                raise ModelError("svdquant_unavailable", name=choice.ref,
                                 device=str(self.plan.device)) from exc
            text = str(exc).lower()
            code = "model_file_corrupt" if ("deserializ" in text or "header" in text or "corrupt" in text or "unexpected eof" in text) else "model_load_failed"
            raise ModelError(code, name=choice.ref) from exc
        self._load_seconds = time.perf_counter() - started
        log.info("read %s in %.1fs", choice.ref, self._load_seconds)
        return pipe, split

    def _place(self, pipe) -> dict:
        """Put a loaded pipeline on the device in the memory mode its size and the free memory
        call for (store/memory.py), then the VAE precision rule and the speed options. Returns
        系统信息's memory line."""
        started = time.perf_counter()
        family = family_of_pipeline(pipe)
        free = torch.cuda.mem_get_info(self.plan.device)[0] if self.plan.device.type == "cuda" else None
        mode, why = memory.choose(self.settings.memory_mode, self.plan.device, free, pipe, family)
        memory.apply(mode, pipe, family, self.plan.device, self.plan.dtype)
        if (self.plan.dtype == torch.float16 and not family.vae_fp16_safe
                and pipe.vae.config.get("force_upcast", True)):
            pipe.vae.to(torch.float32)  # SDXL's own VAE overflows in fp16 (sdxl-vae-fp16-fix does not)
        apply_speed_options(pipe, self.settings, family.denoiser_of(pipe))
        self._load_seconds = (self._load_seconds or 0.0) + time.perf_counter() - started
        log.info("placed on %s/%s in memory mode %s (%s)", self.plan.device, dtype_name(self.plan.dtype), mode, why)
        return memory.describe(pipe, family, mode, why)

    # 2b. The external VAE ------------------------------------------------------------------
    def vae_choices(self) -> list[str]:
        """VAE files and diffusers folders in models/vae (and an install's VAE folders); with a
        model loaded, those whose latents it reads (a 16-channel Flux/Z-Image ``ae.safetensors``
        is not offered to an SD model, nor SD's VAEs to Z-Image)."""
        names = [*self.folders.list_single_files("vae", "config.json"),
                 *self.folders.list_diffusers_dirs("vae", "config.json")]
        if self._base is None:
            return names
        want = self._family.latent_channels
        return [n for n in names if vae_latent_channels(self.folders.resolve("vae", n)) in (None, want)]

    def auto_vae(self, ref: str | None = None) -> str | None:
        """A1111's automatic choice: a VAE in models/vae named like the checkpoint (``x.*`` or
        ``x.vae.*`` for ``x.safetensors``), else none (the model's own)."""
        ref = ref or self.current_ref
        stem = Path(ref).name
        for ending in (".safetensors", ".ckpt"):
            stem = stem[: -len(ending)] if stem.lower().endswith(ending) else stem
        wanted = {stem, stem + ".vae"}
        for name in self.vae_choices():
            base = Path(name).name
            if base in wanted or Path(base).stem in wanted:
                return name
        return None

    def set_vae(self, choice: str) -> str | None:
        """``"auto"``, ``"none"`` (the model's own) or a name from ``vae_choices``; applied to
        the loaded model without reloading its U-Net. Returns the name applied (None: own)."""
        if choice not in ("auto", "none"):
            self.folders.resolve("vae", choice)  # refuses names outside models/vae
        with self.lock:
            if self._base is not None:
                self._apply_vae(choice)
            self._wanted_vae = choice
            return self.vae_ref

    def _apply_vae(self, choice: str, quiet: bool = False) -> None:
        name = self.auto_vae() if choice == "auto" else (None if choice == "none" else choice)
        if name == self.vae_ref:
            return
        base = self._base
        if name is None:
            vae, digest = self._own_vae, None
        else:
            try:
                path = self.folders.resolve("vae", name)
                own = self._own_vae
                vae = load_vae(path, self.plan.dtype, own.config.scaling_factor)
                if vae.config.latent_channels != own.config.latent_channels:
                    raise ModelError("vae_mismatch", name=name, have=vae.config.latent_channels,
                                     want=own.config.latent_channels)
            except (ModelError, ParamError):
                if quiet:  # an automatic pick that cannot load: the model's own VAE, logged
                    log.warning("VAE %s not applied; keeping the model's own", name, exc_info=True)
                    return
                raise
            vae.to(self.plan.device)
            if self.settings.vae_tiling:
                vae.enable_tiling()
            digest = file_hash(path) if path.is_file() else None
        old = base.vae
        base.register_modules(vae=vae)
        self.vae_ref, self.vae_hash = name, digest
        if old is not self._own_vae and old is not vae:
            del old
            free_memory(self.plan.device)
        log.info("VAE: %s", name or "the model's own")

    # 2c. Textual-inversion embeddings ------------------------------------------------------
    def embeddings(self) -> list[Embedding]:
        """Every file in models/embeddings, read against the loaded text encoder's width
        (cached per file, size and mtime; a new model re-checks the widths)."""
        base, family = self.base(), self.family
        width = sum(getattr(base, name).get_input_embeddings().weight.shape[1] for name in family.text_encoders)
        pair = len(family.text_encoders) > 1
        rows, seen = [], set()
        for name in self.folders.list_files("embeddings"):
            try:
                path = self.folders.resolve("embeddings", name)
                stat = path.stat()
            except (OSError, ParamError):
                continue
            key = (str(path), stat.st_size, stat.st_mtime_ns, width, pair)
            row = self._embeddings.get(key)
            if row is None:
                row = self._embeddings[key] = read_embedding(path, name, width, pair)
            if row.name not in seen:  # the first file of a name wins, as in A1111
                seen.add(row.name)
                rows.append(row)
        return rows

    # 3. Task pipelines -----------------------------------------------------------------
    def pipeline(self, cls=None, **components):
        """A task pipeline sharing the base modules (``from_pipe``: no weights are copied)."""
        base = self.base()
        if cls is None or (cls is type(base) and not components):
            base.set_progress_bar_config(disable=True)  # progress goes through the job's step hook
            return base
        # from_pipe casts every module to its `dtype` argument, float32 when none is given: name
        # the store's dtype so the shared fp16 weights stay fp16, and keep a VAE that was
        # upcast after a NaN decode (tasks/denoise.decode_latents) in fp32.
        vae_dtype = base.vae.dtype
        if getattr(self._family.denoiser_of(base), "is_quantized", False):
            # A GGUF transformer cannot be cast (from_pipe casts every module): the same shared
            # modules handed to the task pipeline's constructor as they are.
            wanted = set(inspect.signature(cls.__init__).parameters) - {"self"}
            pipe = cls(**{**{k: v for k, v in base.components.items() if k in wanted}, **components})
        else:
            pipe = cls.from_pipe(base, dtype=self.plan.dtype, **components)
        if base.vae.dtype != vae_dtype:
            base.vae.to(vae_dtype)
        _know_latents(pipe)
        pipe.set_progress_bar_config(disable=True)
        return pipe


    def cached(self, kind: str, name: str, load):
        """A model beside the base (ControlNet, upscaler, annotator, preview decoder), loaded
        once by ``load()`` into the byte-budgeted cache."""
        with self.lock:
            return self.cache.get(kind, name, load)

    # 4. What is resident ---------------------------------------------------------------
    def resident_models(self) -> list[dict]:
        rows = []
        if self._base is None:
            return rows + self.cache.rows()
        for name in (self._family.denoiser, "vae", *self._family.text_encoders):
            module = getattr(self._base, name)
            rows.append(
                {
                    "name": f"{self._base_ref}/{name}",
                    "kind": name,
                    "bytes": module_bytes(module),
                    "device": str(next(module.parameters()).device),
                    "dtype": dtype_name(next(module.parameters()).dtype),
                }
            )
        return rows + self.adapters.rows() + self.cache.rows()

    def system_info(self) -> dict:
        info = {
            "model": self.current_ref,
            "model_loaded": self._base is not None,
            "family": self._family.name if self._base is not None else None,
            "split_files": self.split_files if self._base is not None else None,
            "memory": self.memory if self._base is not None else None,
            "vae": self.vae_ref,
            "device": str(self.plan.device),
            "dtype": dtype_name(self.plan.dtype),
            "attention": (attention_backend(self._family.denoiser_of(self._base))
                          if self._base is not None else "sdpa"),
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
