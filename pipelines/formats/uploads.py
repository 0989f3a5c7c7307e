"""Training pictures as uploaded: image files, same-name ``.txt`` captions, or one zip of them,
gathered into a run's folder — and nothing written anywhere else.

A zip is read member by member and refused whole when a member's name leaves the folder
(``../``, an absolute path, a drive letter), is a link, is larger than an image may be, or
expands far beyond its compressed size (a zip bomb: every member over 64 KiB, and the whole
archive), or when the whole would be too large — all from its directory, before a byte is
written; while writing, no member is read past what it declared and the bytes written in all
are counted against ``budget`` (the user's quota). A refused upload leaves nothing behind:
the caller's folder is removed (``gather`` does it for its ``dest``).
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
MAX_ZIP_BYTES = 512 * 1024 * 1024  # everything in one zip, uncompressed (200 pictures of 2.5 MB)
MAX_MEMBERS = 2000
MAX_RATIO = 100  # uncompressed / compressed, for members over RATIO_FROM and for the whole zip
RATIO_FROM = 64 * 1024


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


class Budget:
    """Bytes an upload may still write (the user's quota left; None: no cap)."""

    def __init__(self, left: int | None) -> None:
        self.left = left

    def spend(self, size: int, name: str) -> None:
        if self.left is None:
            return
        if size > self.left:
            raise ParamError("train_upload_over_quota", name=name[:120], megabytes=max(0, self.left) // 2**20)
        self.left -= size


def _unzip(archive: Path, dest: Path, budget: Budget) -> list[Path]:
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
            if info.file_size > RATIO_FROM and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise ParamError("train_zip_bomb", name=archive.name)
            total += info.file_size
        if total > MAX_ZIP_BYTES:
            raise ParamError("train_zip_too_large", name=archive.name)
        if total > RATIO_FROM and total > MAX_RATIO * max(archive.stat().st_size, 1):
            raise ParamError("train_zip_bomb", name=archive.name)
        budget.spend(total, archive.name)
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


def gather(sources: list, dest: Path, budget: int | None = None) -> tuple[list[str], list[str]]:
    """Copy (or unzip) ``sources`` into ``dest``; returns the pictures and their captions (the
    text of a same-name ``.txt``, else ""), sorted by name. Anything else is refused by name.
    ``budget``: bytes it may write in all (None: no cap). On any refusal ``dest`` is removed
    with whatever was already written into it."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _gather(sources, dest, Budget(budget))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _gather(sources: list, dest: Path, budget: Budget) -> tuple[list[str], list[str]]:
    try:
        files: list[Path] = []
        for source in sources:
            source = Path(source)
            lower = source.name.lower()
            if lower.endswith(".zip"):
                files += _unzip(source, dest, budget)
            elif lower.endswith((*IMAGE_ENDINGS, ".txt")):
                size = source.stat().st_size
                if size > MAX_FILE_BYTES:
                    raise ParamError("train_file_too_large", name=source.name)
                budget.spend(size, source.name)
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
