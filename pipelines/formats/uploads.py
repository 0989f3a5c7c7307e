"""Training pictures as uploaded: image files, same-name ``.txt`` captions, or one zip of them,
gathered into a run's folder — and nothing written anywhere else.

A zip is read member by member and refused whole when a member's name leaves the folder
(``../``, an absolute path, a drive letter), is a link, is larger than an image may be, or
expands far beyond its compressed size (a zip bomb), or when the whole would be too large.
Pictures are checked like any upload (formats/images.open_upload: format, size, decompression
bomb) before training sees them.
"""

from __future__ import annotations

import errno
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import ParamError
from .images import open_upload

IMAGE_ENDINGS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_ZIP_BYTES = 2 * 1024 * 1024 * 1024  # everything in one zip, uncompressed
MAX_MEMBERS = 2000
MAX_RATIO = 200  # uncompressed / compressed, for members over 1 MiB


def _unsafe(name: str) -> bool:
    if "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return True
    return any(part in ("..",) for part in PurePosixPath(name).parts)


def _skipped(name: str) -> bool:
    """Folders, macOS resource forks, hidden files: not pictures, silently left out."""
    parts = PurePosixPath(name).parts
    return name.endswith("/") or not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def _target(dest: Path, name: str) -> Path:
    """A flat, unused file name in ``dest`` for ``name``."""
    base = Path(PurePosixPath(name).name)
    candidate, n = dest / base.name, 1
    while candidate.exists():
        candidate = dest / f"{base.stem}-{n}{base.suffix}"
        n += 1
    return candidate


def _unzip(archive: Path, dest: Path) -> list[Path]:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise ParamError("train_bad_zip", name=archive.name) from None
    written: list[Path] = []
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ParamError("train_zip_too_large", name=archive.name)
        # 1. Refuse the whole zip before writing anything when one member is unsafe.
        total = 0
        for info in infos:
            if _unsafe(info.filename):
                raise ParamError("train_zip_unsafe", name=archive.name, member=info.filename[:120])
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ParamError("train_zip_unsafe", name=archive.name, member=info.filename[:120])
            if info.file_size > MAX_FILE_BYTES and not _skipped(info.filename):
                raise ParamError("train_file_too_large", name=info.filename[:120])
            if info.file_size > 1 << 20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise ParamError("train_zip_bomb", name=archive.name)
            total += info.file_size
        if total > MAX_ZIP_BYTES:
            raise ParamError("train_zip_too_large", name=archive.name)
        # 2. Pictures and captions, flattened into dest; read no more than each says it holds.
        for info in infos:
            name = info.filename
            if _skipped(name) or not name.lower().endswith((*IMAGE_ENDINGS, ".txt")):
                continue
            path = _target(dest, name)
            try:
                with zf.open(info) as source, open(path, "wb") as out:
                    remaining = info.file_size
                    while remaining > 0:
                        block = source.read(min(1 << 20, remaining))
                        if not block:
                            break
                        out.write(block)
                        remaining -= len(block)
            except (zipfile.BadZipFile, EOFError, RuntimeError):  # corrupt, or encrypted
                path.unlink(missing_ok=True)
                raise ParamError("train_bad_zip", name=archive.name) from None
            written.append(path)
    return written


def gather(sources: list, dest: Path) -> tuple[list[str], list[str]]:
    """Copy (or unzip) ``sources`` into ``dest``; returns the pictures and their captions (the
    text of a same-name ``.txt``, else ""), sorted by name. Anything else is refused by name."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        files: list[Path] = []
        for source in sources:
            source = Path(source)
            lower = source.name.lower()
            if lower.endswith(".zip"):
                files += _unzip(source, dest)
            elif lower.endswith((*IMAGE_ENDINGS, ".txt")):
                if source.stat().st_size > MAX_FILE_BYTES:
                    raise ParamError("train_file_too_large", name=source.name)
                target = _target(dest, source.name)
                shutil.copyfile(source, target)
                files.append(target)
            else:
                raise ParamError("train_not_image", name=source.name[:120])
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ParamError("train_disk_full") from None
        raise
    pictures = sorted(p for p in files if p.suffix.lower() in IMAGE_ENDINGS)
    if not pictures:
        raise ParamError("train_no_images")
    for picture in pictures:  # every picture must open as one (size and decompression checked)
        try:
            open_upload(str(picture)).close()
        except ParamError as exc:
            raise ParamError("train_bad_image", name=picture.name[:120], why=exc.code) from None
    captions = []
    for picture in pictures:
        text = picture.with_suffix(".txt")
        captions.append(text.read_text(encoding="utf-8", errors="replace").strip()[:1000] if text.is_file() else "")
    return [str(p) for p in pictures], captions
