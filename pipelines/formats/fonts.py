"""Fonts for text drawn into images (the visible AI label, X/Y grid axes): a font with Chinese
glyphs found on the system, or Pillow's own font so drawing never fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from PIL import ImageFont

KNOWN_CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/adobe-source-han-sans/SourceHanSansCN-Regular.otf",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)


def find_cjk_font() -> str | None:
    """A font file with Chinese glyphs, or None."""
    candidates = [os.environ.get("DANQING_FONT") or "", *KNOWN_CJK_FONTS]
    for path in candidates:
        if path and Path(path).is_file():
            return path
    if shutil.which("fc-list"):
        try:
            out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        files = sorted({line.split(":")[0].strip() for line in out.splitlines() if line.strip()},
                       key=lambda p: ("Sans" not in p and "Hei" not in p, "Bold" in p, p))
        return next((f for f in files if Path(f).is_file()), None)
    return None


def load_font(path: str | None, size: int):
    """The CJK font (its Simplified Chinese face inside a .ttc), or Pillow's own font."""
    if path:
        try:
            best = ImageFont.truetype(path, size, index=0)
            if path.lower().endswith(".ttc"):
                for index in range(1, 10):
                    try:
                        face = ImageFont.truetype(path, size, index=index)
                    except OSError:
                        break
                    if face.getname()[0].endswith(" SC"):
                        return face
            return best
        except OSError:
            pass
    return ImageFont.load_default(size=size)
