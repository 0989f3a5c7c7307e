"""One place that maps each model kind to its folder and allowed file endings (ComfyUI's
``folder_paths`` idea), and resolves user-supplied names strictly inside those folders.

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
    "checkpoints": ("checkpoints", (".safetensors",)),
    "lora": ("lora", (".safetensors", ".bin")),
    "controlnet": ("controlnet", (".safetensors",)),
    "upscalers": ("upscalers", (".pth", ".safetensors")),
    "annotators": ("annotators", ()),
    "vae_approx": ("vae-approx", ()),  # tiny preview decoders (diffusers AutoencoderTiny folders)
}


@dataclass(frozen=True)
class ModelFolders:
    """The models directory of one running app (the demo bundle's, or the user's)."""

    root: Path

    def folder(self, kind: str) -> Path:
        sub, _ = MODEL_KINDS[kind]
        return self.root / sub

    def ensure(self) -> None:
        for kind in MODEL_KINDS:
            self.folder(kind).mkdir(parents=True, exist_ok=True)

    def list_files(self, kind: str) -> list[str]:
        """Relative names of the files of ``kind`` (sorted), following no symlink out."""
        folder = self.folder(kind)
        _, endings = MODEL_KINDS[kind]
        if not folder.is_dir() or not endings:
            return []
        names = []
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in endings and path.is_file() and inside(folder, path):
                names.append(path.relative_to(folder).as_posix())
        return names

    def list_diffusers_dirs(self, kind: str, marker: str) -> list[str]:
        """Relative names of sub-folders (one or two levels down) that contain ``marker``."""
        folder = self.folder(kind)
        if not folder.is_dir():
            return []
        found = []
        for pattern in (f"*/{marker}", f"*/*/{marker}"):
            for path in sorted(folder.glob(pattern)):
                if inside(folder, path.parent):
                    found.append(path.parent.relative_to(folder).as_posix())
        return found

    def resolve(self, kind: str, name: str) -> Path:
        """The path of ``name`` inside the folder of ``kind``; refuses anything that escapes."""
        folder = self.folder(kind)
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
        path = folder / name
        if not path.exists() or not inside(folder, path):
            raise ParamError("unknown_model_name", kind=kind, name=name[:80])
        return path


def inside(folder: Path, path: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies inside ``folder`` (symlinks resolved)."""
    try:
        real_folder = Path(os.path.realpath(folder))
        return Path(os.path.realpath(path)).is_relative_to(real_folder)
    except OSError:
        return False
