"""One place that maps each model kind to its folders and allowed file endings (ComfyUI's
``folder_paths`` idea), and resolves user-supplied names strictly inside those folders.

A kind has its own folder under the models dir and, read-only, the matching folders of an
existing AUTOMATIC1111 or ComfyUI install (``--a1111-dir`` / ``--comfyui-dir``): a name is
looked up in each in turn, the first holding it wins, and nothing is copied or written there.

Names that come from the UI or the API are never paths: ``..``, absolute paths, drive letters,
NTFS streams (``::$DATA``) and symlinks that leave the folder are all refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParamError

# kind -> (sub-folder of the models dir, accepted file endings; empty means "folders only")
MODEL_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "checkpoints": ("checkpoints", (".safetensors", ".ckpt")),  # single files; diffusers folders too
    "lora": ("lora", (".safetensors", ".bin")),
    "controlnet": ("controlnet", (".safetensors",)),
    "upscalers": ("upscalers", (".pth", ".safetensors")),
    "annotators": ("annotators", ()),
    "captioners": ("captioners", ()),  # transformers image-to-text folders (training captions)
    "translators": ("translators", ()),
    "prompters": ("prompters", ()),  # small transformers instruct models (提示词扩写)  # transformers zh→en folders (opus-mt-zh-en, or a small instruct model)
    "vae": ("vae", (".safetensors", ".pt", ".ckpt", ".bin")),  # single files; diffusers folders too
    "embeddings": ("embeddings", (".pt", ".safetensors", ".bin")),  # textual inversion
    "vae_approx": ("vae-approx", ()),  # tiny preview decoders (diffusers AutoencoderTiny folders)
    # ComfyUI's split files (formats/zimage_files.py): a transformer alone, a text encoder alone.
    "diffusion_models": ("diffusion_models", (".safetensors", ".gguf")),
    "text_encoders": ("text_encoders", (".safetensors",)),
}


# Where an existing install keeps each kind (relative to the install's own folder).
A1111_LAYOUT: dict[str, tuple[str, ...]] = {
    "checkpoints": ("models/Stable-diffusion",),
    "lora": ("models/Lora", "models/LyCORIS"),
    "controlnet": ("models/ControlNet", "extensions/sd-webui-controlnet/models"),
    "upscalers": ("models/ESRGAN", "models/RealESRGAN"),
    "vae": ("models/VAE",),
    "embeddings": ("embeddings",),
}
COMFYUI_LAYOUT: dict[str, tuple[str, ...]] = {
    "checkpoints": ("models/checkpoints",),
    "lora": ("models/loras",),
    "controlnet": ("models/controlnet",),
    "upscalers": ("models/upscale_models",),
    "vae": ("models/vae",),
    "embeddings": ("models/embeddings",),
    "diffusion_models": ("models/diffusion_models", "models/unet"),
    "text_encoders": ("models/text_encoders", "models/clip"),
}
LAYOUTS = {"a1111": A1111_LAYOUT, "comfyui": COMFYUI_LAYOUT}


# ComfyUI's extra_model_paths.yaml keys -> Danqing's kinds (other keys are ComfyUI's own).
EXTRA_PATHS_KEYS = {"checkpoints": "checkpoints", "vae": "vae", "loras": "lora", "lora": "lora",
                    "embeddings": "embeddings", "controlnet": "controlnet", "upscale_models": "upscalers",
                    "diffusion_models": "diffusion_models", "unet": "diffusion_models",
                    "text_encoders": "text_encoders", "clip": "text_encoders"}


def read_extra_model_paths(path: Path) -> tuple[tuple[str, Path], ...]:
    """(kind, folder) pairs from a ComfyUI-style ``extra_model_paths.yaml``: sections with an
    optional ``base_path`` (relative to the file) and per-kind folders, one per line. Folders
    that do not exist are skipped (logged); a file that is not such YAML raises ValueError."""
    import logging

    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds no sections")
    pairs: list[tuple[str, Path]] = []
    for section in data.values():
        if not isinstance(section, dict):
            raise ValueError(f"{path}: a section is not a mapping")
        base = Path(str(section.get("base_path") or "")).expanduser()
        base = base if base.is_absolute() else path.parent / base
        for key, value in section.items():
            kind = EXTRA_PATHS_KEYS.get(str(key))
            if kind is None or not isinstance(value, str):
                continue
            for line in value.splitlines():
                folder = Path(line.strip()).expanduser()
                if not line.strip():
                    continue
                folder = folder if folder.is_absolute() else base / folder
                if folder.is_dir():
                    pairs.append((kind, folder))
                else:
                    logging.getLogger(__name__).warning("extra model paths: %s (%s) is not a folder", folder, key)
    return tuple(pairs)


def install_folders(kind_of_install: str, root: Path) -> tuple[tuple[str, Path], ...]:
    """(model kind, folder) of an A1111 or ComfyUI install that exist on disk."""
    return tuple((kind, root / sub) for kind, subs in LAYOUTS[kind_of_install].items() for sub in subs
                 if (root / sub).is_dir())


@dataclass(frozen=True)
class ModelFolders:
    """The models directory of one running app (the demo bundle's, or the user's), and the
    read-only ``extra`` (kind, folder) pairs of installs it also reads."""

    root: Path
    extra: tuple[tuple[str, Path], ...] = ()

    def folder(self, kind: str) -> Path:
        """The kind's own folder (where Danqing puts files; the one messages point to)."""
        sub, _ = MODEL_KINDS[kind]
        return self.root / sub

    def roots(self, kind: str) -> list[Path]:
        """Every folder of ``kind``, its own first."""
        return [self.folder(kind), *(path for k, path in self.extra if k == kind)]

    def ensure(self) -> None:
        for kind in MODEL_KINDS:
            self.folder(kind).mkdir(parents=True, exist_ok=True)

    def list_files(self, kind: str) -> list[str]:
        """Relative names of the files of ``kind`` in all its folders (sorted per folder, a name
        seen in an earlier folder not repeated), following no symlink out."""
        _, endings = MODEL_KINDS[kind]
        if not endings:
            return []
        names: list[str] = []
        for folder in self.roots(kind):
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                name = path.relative_to(folder).as_posix()
                if _hidden(name):  # a download in progress (.x.partdir), editor and OS files
                    continue
                if path.suffix.lower() in endings and name not in names and path.is_file() and inside(folder, path):
                    names.append(name)
        return names

    def list_single_files(self, kind: str, marker: str = "model_index.json") -> list[str]:
        """``list_files`` without the files inside diffusers folders (those hold their own
        ``unet/diffusion_pytorch_model.safetensors`` and so on)."""
        folders = self.list_diffusers_dirs(kind, marker)
        return [name for name in self.list_files(kind) if not any(name.startswith(f + "/") for f in folders)]

    def list_diffusers_dirs(self, kind: str, marker: str) -> list[str]:
        """Relative names of sub-folders (one or two levels down) that contain ``marker``."""
        found: list[str] = []
        for folder in self.roots(kind):
            if not folder.is_dir():
                continue
            for pattern in (f"*/{marker}", f"*/*/{marker}"):
                for path in sorted(folder.glob(pattern)):
                    name = path.parent.relative_to(folder).as_posix()
                    if not _hidden(name) and name not in found and inside(folder, path.parent):
                        found.append(name)
        return found

    def resolve(self, kind: str, name: str) -> Path:
        """The path of ``name`` inside a folder of ``kind``; refuses anything that escapes."""
        if not isinstance(name, str) or not name or len(name) > 255:
            raise ParamError("bad_model_name", kind=kind)
        if (
            "\x00" in name
            or ":" in name
            or "\\" in name
            or name.startswith(("/", "~"))
            or any(part in ("..", ".", "") for part in name.split("/"))
        ):
            raise ParamError("bad_model_name", kind=kind)
        for folder in self.roots(kind):
            path = folder / name
            if path.exists() and inside(folder, path):
                return path
        raise ParamError("unknown_model_name", kind=kind, name=name[:80])


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.split("/"))


def inside(folder: Path, path: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies inside ``folder`` (symlinks resolved)."""
    try:
        real_folder = Path(os.path.realpath(folder))
        return Path(os.path.realpath(path)).is_relative_to(real_folder)
    except OSError:
        return False
