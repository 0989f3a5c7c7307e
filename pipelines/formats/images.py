"""Images from users: reading uploads safely, every PIL mode to 8-bit RGB, fitting to an output
size.

Uploads come from browsers and API clients, so ``load_image`` trusts nothing: the pixel count is
checked from the header before anything is decoded (a 100-byte PNG can declare 12000x12000),
EXIF rotation is applied the way phones expect, and every mode (CMYK, palette, alpha, 16-bit
grey) becomes plain 8-bit RGB.
"""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ParamError
from ..requests import RESIZE_MODES, as_int, in_range

log = logging.getLogger(__name__)

# Largest upload accepted (40 megapixels: a 7700x5200 photo). PIL's own bomb check uses the same
# limit, and its warning is turned into an error inside load_image.
MAX_INPUT_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS
# Largest image an upscale starts from, a smaller limit on purpose: a 4096² input is 16384²
# (805 MB as RGB) at x4. Both limits live here, side by side.
MAX_UPSCALE_INPUT_PIXELS = 4096 * 4096
# Largest upload file (the UI's limit too: app.py's max_file_size).
MAX_UPLOAD_BYTES = 25 * 2**20
# The formats designers use; PIL can read some forty, each a parser exposed to the network.
# Only these are tried (GIF: its first frame; a camera's MPO opens as its JPEG).
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
Image.init()  # register every plugin once, so Image.open(formats=...) finds each of these


# 1. Reading uploads -----------------------------------------------------------------------
def load_image(data) -> Image.Image:
    """An 8-bit RGB image from a PIL image, a file path or bytes, upright per its EXIF tag.

    Raises ParamError ``image_unreadable`` (not an image, corrupt, truncated) or
    ``image_too_large`` (over MAX_INPUT_PIXELS, refused from the header before decoding); only
    the UPLOAD_FORMATS are read.
    """
    return to_rgb(open_upload(data))


def open_upload(data) -> Image.Image:
    """A decoded, upright image in its own mode (alpha, 16-bit kept) after the same checks as
    ``load_image``: for callers that keep alpha, like upscaling."""
    if isinstance(data, Image.Image):
        if data.format and data.format.upper() not in (*UPLOAD_FORMATS, "MPO"):
            raise ParamError("image_format_refused", format=str(data.format)[:20])
        _check_pixels(*data.size)
        return ImageOps.exif_transpose(data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(data))
    elif isinstance(data, (str, Path)):
        source = Path(data)
        if not source.is_file():
            raise ParamError("image_unreadable")
    else:
        raise ParamError("image_unreadable")
    with _open_checked(source) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
        return upright if upright is not image else image.copy()


def image_size(data) -> tuple[int, int]:
    """An upload's (width, height) from its header alone (as it will be decoded: EXIF rotation
    counted), with the same checks as ``open_upload``; for budgets counted before a job starts."""
    if isinstance(data, Image.Image):
        _check_pixels(*data.size)
        return data.size
    if isinstance(data, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(data))
    elif isinstance(data, (str, Path)) and Path(data).is_file():
        source = Path(data)
    else:
        raise ParamError("image_unreadable")
    with _open_checked(source) as image:
        width, height = image.size
        turned = image.getexif().get(0x0112) in (5, 6, 7, 8)  # rotated a quarter turn
        return (height, width) if turned else (width, height)


def check_upload(path) -> None:
    """Refuse an image file from its header alone: not an image (``image_unreadable``) or over
    MAX_INPUT_PIXELS (``image_too_large``). For the UI's image inputs, which must be checked
    before Gradio's own preprocessing decodes or converts the pixels."""
    with _open_checked(Path(path)):
        pass


def read_info(data: bytes) -> dict:
    """An upload's metadata (PNG text chunks before the pixels, EXIF comments), without decoding
    a pixel; the same format and size checks as ``open_upload``."""
    with _open_checked(io.BytesIO(bytes(data))) as image:
        return dict(image.info)


@contextmanager
def _open_checked(source):
    """``Image.open`` (header only) with the pixel cap checked before anything is decoded;
    PIL's errors and decompression-bomb warnings, also from the caller's block, become
    ``image_unreadable`` / ``image_too_large``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source, formats=UPLOAD_FORMATS) as image:
                _check_pixels(*image.size)
                yield image
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ParamError("image_too_large", megapixels=MAX_INPUT_PIXELS // 1_000_000) from None
        except ParamError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            log.info("refused an unreadable image: %s", exc)
            raise ParamError("image_unreadable") from None


def _check_pixels(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ParamError("image_unreadable")
    if width * height > MAX_INPUT_PIXELS:
        raise ParamError("image_too_large", megapixels=MAX_INPUT_PIXELS // 1_000_000)


def _grey8(image: Image.Image) -> np.ndarray | None:
    """8-bit grey samples of a 16/32-bit integer or float image; None for every other mode.
    16-bit samples (and any above 255) map 65535 to 255; floats in [0, 1] are scaled up."""
    mode = image.mode
    if not (mode in ("I", "F") or mode.startswith("I;16")):
        return None
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    peak = float(values.max()) if values.size else 0.0
    if mode.startswith("I;16") or peak > 255:
        values = values / 257.0
    elif mode == "F" and peak <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def has_alpha(image: Image.Image) -> bool:
    """An alpha channel, or a palette/grey/RGB image with a transparent colour (PNG tRNS)."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha composited on white, 16/32-bit grey scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    grey = _grey8(image)
    if grey is not None:
        return Image.fromarray(grey, mode="L").convert("RGB")
    if has_alpha(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError):
        raise ParamError("image_unreadable") from None


def to_rgb8(image: Image.Image) -> tuple[np.ndarray, Image.Image | None]:
    """(H×W×3 uint8 RGB, alpha as an "L" image or None) for any PIL mode: ``to_rgb`` for
    callers that keep alpha apart (upscaling)."""
    grey = _grey8(image)
    if grey is not None:
        return np.repeat(grey[:, :, None], 3, axis=2), None
    if has_alpha(image):
        rgba = image.convert("RGBA")
        return np.asarray(rgba.convert("RGB")), rgba.getchannel("A")
    return np.asarray(image.convert("RGB")), None


# 2. Fitting to the output size --------------------------------------------------------------
def fit_to(image: Image.Image, width: int, height: int, mode: str = "crop") -> Image.Image:
    """``image`` at exactly width x height.

    ``crop`` scales to cover and cuts the overflow evenly (A1111's "Crop and Resize"), ``fit``
    scales to fit and pads with black (no edges, farthest depth), ``stretch`` ignores the aspect.
    """
    if mode not in RESIZE_MODES:
        raise ParamError("unknown_resize_mode", value=str(mode)[:40])
    width, height = as_int("width", width), as_int("height", height)
    in_range("width", width, 1, 16384)
    in_range("height", height, 1, 16384)
    size = (width, height)
    if image.size == size:
        return image
    if mode == "crop":
        return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)
    if mode == "fit":
        return ImageOps.pad(image, size, method=Image.Resampling.LANCZOS, color=(0, 0, 0))
    return image.resize(size, Image.Resampling.LANCZOS)
