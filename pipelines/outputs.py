"""Saving generated images: ``outputs/<date>/<number>-<seed>.png`` with A1111 parameters and
the implicit AIGC label in the PNG metadata. Every save then goes through ``on_saved`` (the
extensions' post-processing steps), so whatever task saved the image, they see it."""

from __future__ import annotations

import datetime as _dt
import logging
import re
import threading
from pathlib import Path
from typing import Callable

from PIL import Image

from .formats.pnginfo import aigc_label, png_metadata

_NUMBERED = re.compile(r"^(\d{5})-")
log = logging.getLogger(__name__)


def add_visible_label(image: Image.Image, text: str) -> Image.Image:
    """The explicit label of GB 45438-2025 (an operator option): ``text`` in the lower-right
    corner on a translucent band, sized to the image."""
    from PIL import ImageDraw

    from .formats.fonts import find_cjk_font, load_font

    size = max(12, min(image.size) // 24)
    font_path = find_cjk_font() if not text.isascii() else None
    if not text.isascii() and font_path is None:
        text = "AI-generated"  # no font with Chinese glyphs on this machine: never draw boxes
    font = load_font(font_path, size)
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = size // 3
    x, y = base.width - (right - left) - 3 * pad, base.height - (bottom - top) - 3 * pad
    draw.rectangle((x - pad, y - pad, x + right - left + pad, y + bottom - top + pad), fill=(0, 0, 0, 110))
    draw.text((x - left, y - top), text, font=font, fill=(255, 255, 255, 230))
    labelled = Image.alpha_composite(base, layer)
    return labelled if image.mode == "RGBA" else labelled.convert("RGB")


class OutputWriter:
    def __init__(
        self,
        root: Path,
        on_saved: Callable[[Path, dict], None] | None = None,
        visible_label: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.on_saved = on_saved  # called with (path, {"parameters", "seed", "suffix"}) after each save
        self.visible_label = visible_label  # text of the explicit AI label, None = off
        self._lock = threading.Lock()
        self._next: dict[Path, int] = {}

    def day_dir(self) -> Path:
        return self.root / _dt.date.today().isoformat()

    def _number(self, folder: Path) -> int:
        if folder not in self._next:
            used = [int(m.group(1)) for p in folder.glob("*.png") if (m := _NUMBERED.match(p.name))]
            self._next[folder] = max(used, default=0) + 1
        number = self._next[folder]
        self._next[folder] = number + 1
        return number

    def save(self, image: Image.Image, parameters: str, seed: int, suffix: str = "") -> Path:
        """Write one PNG; never overwrites an existing file."""
        with self._lock:
            folder = self.day_dir()
            folder.mkdir(parents=True, exist_ok=True)
            while True:
                path = folder / f"{self._number(folder):05d}-{seed}{suffix}.png"
                if not path.exists():
                    break
            label = aigc_label(produce_id=f"{folder.name}/{path.stem}")
            if self.visible_label:
                image = add_visible_label(image, self.visible_label)
            image.save(path, format="PNG", pnginfo=png_metadata(parameters, label))
        if self.on_saved is not None:
            try:
                self.on_saved(path, {"parameters": parameters, "seed": seed, "suffix": suffix})
            except Exception:  # a post-processing step never costs the user the saved image
                log.exception("post-processing of %s failed", path)
        return path

    def recent(self, limit: int = 60) -> list[Path]:
        """The newest saved images, newest first."""
        if not self.root.is_dir():
            return []
        files = sorted(self.root.glob("*/*.png"), key=lambda p: p.stat().st_mtime, reverse=True)
        return files[:limit]
