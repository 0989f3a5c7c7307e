"""Saving generated images: ``outputs/<date>/<number>-<seed>.png`` with A1111 parameters and
the implicit AIGC label in the PNG metadata. Every save then goes through ``on_saved`` (the
extensions' post-processing steps), so whatever task saved the image, they see it.

With logins (``--auth``) each user's images go to ``outputs/users/<user>/<date>/``: the gallery
lists only the user's own, and the file route serves a user's folder to that user alone
(``may_read``). ``quota_bytes`` (``--max-user-outputs-mb``) caps what one user keeps on disk:
a job is refused before it starts once the folder is full."""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
import threading
from pathlib import Path
from typing import Callable

from PIL import Image, PngImagePlugin

from .errors import DanqingError
from .formats.pnginfo import aigc_label, png_metadata
from .history import TRASH_DIR, USERS_DIR, History

_NUMBERED = re.compile(r"^(\d{5})-")
_PLAIN_NAME = re.compile(r"^\w[\w.-]{0,63}$")
_PLAIN_STEM = re.compile(r"[^\w.-]+")


def _folder_bytes(root: Path) -> int:
    """Bytes of the files under ``root`` (the indexes at the top of outputs/ not counted)."""
    total = 0
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.name.endswith((".sqlite3", ".sqlite3-wal", ".sqlite3-shm")):
                total += path.stat().st_size
        except OSError:
            continue
    return total


def user_folder(user: str) -> str:
    """A user's folder name: the name itself when it is a plain file name (Chinese included),
    else a hash of it (no separators, dots or device names ever reach the file system)."""
    if _PLAIN_NAME.match(user) and not user.endswith("."):
        return user
    return "u-" + hashlib.sha256(user.encode("utf-8")).hexdigest()[:16]
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
        quota_bytes: int = 0,
    ) -> None:
        self.root = Path(root)
        self.quota_bytes = quota_bytes  # per user; 0: no cap
        self._used: dict[Path, int] = {}
        self.on_saved = on_saved  # called with (path, {"parameters", "seed", "suffix"}) after each save
        self.visible_label = visible_label  # text of the explicit AI label, None = off
        self._lock = threading.Lock()
        self._next: dict[Path, int] = {}
        self.history = History(self.root)  # the SQLite index of everything saved here

    def user_root(self, user: str = "") -> Path:
        return self.root / USERS_DIR / user_folder(user) if user else self.root

    def day_dir(self, user: str = "") -> Path:
        return self.user_root(user) / _dt.date.today().isoformat()

    def used_bytes(self, user: str = "") -> int:
        """Bytes of everything in the user's folder: saved images, the trash, thumbnails and
        training runs (counted once, then kept up to date by ``save``; ``forget_usage`` after
        files arrive another way)."""
        root = self.user_root(user)
        with self._lock:
            if root not in self._used:
                self._used[root] = _folder_bytes(root)
            return self._used[root]

    def forget_usage(self, user: str = "") -> None:
        with self._lock:
            self._used.pop(self.user_root(user), None)

    def check_quota(self, user: str = "", more: int = 0) -> None:
        """Refuse a job (or a save, or an upload of ``more`` bytes) when the user's folder is
        at the cap: checked before a job and again before every saved picture."""
        if self.quota_bytes <= 0:
            return
        used = self.used_bytes(user)
        if used + more >= self.quota_bytes:
            raise DanqingError("outputs_quota_full", used=used // 2**20, limit=self.quota_bytes // 2**20)

    def may_read(self, path: str | Path, user: str = "") -> bool:
        """False when ``path`` lies in another user's folder (everything else: the file route's
        own rules decide)."""
        users = (self.root / USERS_DIR).resolve()
        try:
            parts = Path(path).resolve().relative_to(users).parts
        except (ValueError, OSError):
            return True
        return bool(parts) and bool(user) and parts[0] == user_folder(user)

    def _number(self, folder: Path) -> int:
        if folder not in self._next:
            # Numbers in the day's trash count too: a restored image never meets a newer namesake.
            trash = folder.parent / TRASH_DIR / folder.name
            used = [int(m.group(1)) for p in (*folder.glob("*.png"), *trash.glob("*.png"))
                    if (m := _NUMBERED.match(p.name))]
            self._next[folder] = max(used, default=0) + 1
        number = self._next[folder]
        self._next[folder] = number + 1
        return number

    def save(self, image: Image.Image, parameters: str, seed: int, suffix: str = "", user: str = "",
             generated: bool = True, name: str | None = None) -> Path:
        """Write one PNG into the user's folder; never overwrites an existing file. ``generated``:
        the AIGC label (implicit, and the visible mark when on) goes on generated images only, not
        on a control map computed from a user's picture. ``name`` replaces the seed in the file
        name (an upscaled photo keeps its own name)."""
        stem = _PLAIN_STEM.sub("_", name)[:60].strip("._") if name else ""
        self.check_quota(user)  # per picture: one request never writes far past the cap
        with self._lock:
            folder = self.day_dir(user)
            folder.mkdir(parents=True, exist_ok=True)
            while True:
                path = folder / f"{self._number(folder):05d}-{stem or seed}{suffix}.png"
                if not path.exists():
                    break
            if generated and self.visible_label:
                image = add_visible_label(image, self.visible_label)
            if generated:
                info = png_metadata(parameters, aigc_label(produce_id=f"{folder.name}/{path.stem}"))
            else:
                info = PngImagePlugin.PngInfo()
                info.add_itxt("parameters", parameters)
            # Written beside, then renamed: a kill -9 mid-write never leaves a truncated PNG
            # under an image's name (the index rebuild would skip it, the gallery show it broken).
            partial = path.with_name(f".{path.name}.part")
            image.save(partial, format="PNG", pnginfo=info)
            os.replace(partial, path)
            root = self.user_root(user)
            if root in self._used:
                self._used[root] += path.stat().st_size
        try:
            self.history.add(path, parameters)
        except Exception:  # the index catches up from the file at the next start
            log.exception("indexing %s failed", path)
        if self.on_saved is not None:
            try:
                self.on_saved(path, {"parameters": parameters, "seed": seed, "suffix": suffix})
            except Exception:  # a post-processing step never costs the user the saved image
                log.exception("post-processing of %s failed", path)
        return path

    def recent(self, limit: int = 60, user: str = "") -> list[Path]:
        """The user's newest saved images, newest first."""
        root = self.user_root(user)
        if not root.is_dir():
            return []
        files = sorted(root.glob("*/*.png"), key=lambda p: p.stat().st_mtime, reverse=True)
        return files[:limit]
