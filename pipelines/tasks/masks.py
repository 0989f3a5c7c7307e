"""Masks for 局部重绘 and 扩图: reading one, blurring its edge, the box of the "only masked"
mode, filling the masked area before denoising, and pasting results back so that every pixel
outside the (blurred) mask is the input's own.

Plain numpy/OpenCV/PIL over 8-bit images; white (255) means "repaint".
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageFilter

from ..errors import ParamError
from ..formats.images import has_alpha, open_upload, to_rgb

MASKED = 128  # a mask pixel at or above this counts as masked (what is repainted)
ASPECT_TOLERANCE = 0.02  # a mask whose aspect ratio differs more from the image's is refused


def read_mask(data, size: tuple[int, int], invert: bool = False) -> Image.Image:
    """The mask of an image of ``size`` as an "L" image, white = repaint.

    ``data``: a mask image, or a list of layers painted in the browser (their strokes are the
    mask). Transparent masks (painted strokes on a clear layer, Krita's and Photoshop's
    exports) count by their coverage; opaque ones by their brightness. A mask of another size
    but the same aspect ratio is resized; another aspect ratio is refused, as is a mask with
    nothing in it.
    """
    layers = list(data) if isinstance(data, (list, tuple)) else [data]
    union = None
    for layer in layers:
        # 1. Grey levels; 2. the image's size.
        mask = _resized(_grey_mask(layer), size)
        union = mask if union is None else Image.fromarray(np.maximum(np.asarray(union), np.asarray(mask)))
    if invert:
        union = Image.eval(union, lambda v: 255 - v)
    # 3. Something to repaint.
    if not (np.asarray(union) >= MASKED).any():
        raise ParamError("mask_empty")
    return union


def _grey_mask(data) -> Image.Image:
    try:
        image = open_upload(data)
    except ParamError as exc:
        raise ParamError("mask_unreadable") from exc
    if has_alpha(image):  # strokes on a transparent layer: composited on black
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("L")
    return to_rgb(image).convert("L")


def _resized(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    if mask.size == tuple(size):
        return mask
    mw, mh = mask.size
    iw, ih = size
    if abs(mw / mh - iw / ih) > ASPECT_TOLERANCE * (iw / ih):
        raise ParamError("mask_size_mismatch", mask=f"{mw}×{mh}", image=f"{iw}×{ih}")
    return mask.resize(tuple(size), Image.Resampling.BILINEAR)


def blur(mask: Image.Image, radius: int) -> Image.Image:
    """The mask's edge softened by a Gaussian of ``radius`` pixels (0: as it is)."""
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def crop_box(mask: Image.Image, padding: int, aspect: float) -> tuple[int, int, int, int]:
    """The box the "only masked" mode works on: the mask's bounding box plus ``padding``,
    widened to ``aspect`` (width / height, the size it is worked at) while it fits the image."""
    width, height = mask.size
    ys, xs = np.nonzero(np.asarray(mask) > 0)
    x0, x1 = max(int(xs.min()) - padding, 0), min(int(xs.max()) + 1 + padding, width)
    y0, y1 = max(int(ys.min()) - padding, 0), min(int(ys.max()) + 1 + padding, height)
    # Widen the narrow direction around its centre, shifting inside the image where it meets an edge.
    w, h = x1 - x0, y1 - y0
    if w / h < aspect:
        x0, x1 = _widen(x0, x1, min(width, round(h * aspect)), width)
    else:
        y0, y1 = _widen(y0, y1, min(height, round(w / aspect)), height)
    return x0, y0, x1, y1


def _widen(start: int, end: int, length: int, limit: int) -> tuple[int, int]:
    grow = max(length - (end - start), 0)
    start -= grow // 2
    end += grow - grow // 2
    if start < 0:
        end, start = end - start, 0
    if end > limit:
        start, end = max(start - (end - limit), 0), limit
    return start, end


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area painted with the colours around it, smeared inwards
    coarse to fine (a normalised Gaussian blur of the kept pixels at shrinking radii)."""
    pixels = np.asarray(image, dtype=np.float32)
    keep = (np.asarray(mask) < MASKED).astype(np.float32)
    if not keep.any():  # nothing to borrow from: mid grey
        return Image.new("RGB", image.size, (127, 127, 127))
    out = pixels.copy()
    inside = keep == 0
    for sigma in (128, 32, 8, 2):
        weight = cv2.GaussianBlur(keep, (0, 0), sigma)
        colour = cv2.GaussianBlur(pixels * keep[..., None], (0, 0), sigma)
        known = weight > 1e-4
        estimate = colour / np.maximum(weight, 1e-4)[..., None]
        out[inside & known] = estimate[inside & known]
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


def paste_back(original: Image.Image, result: Image.Image, soft_mask: Image.Image,
               box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """``result`` (the whole picture, or the worked ``box``) over ``original`` through the soft
    mask: where the mask is 0 the pixel is the original's, exactly."""
    canvas = original.copy()
    if box is None:
        canvas.paste(result.resize(original.size, Image.Resampling.LANCZOS) if result.size != original.size else result)
    else:
        x0, y0, x1, y1 = box
        canvas.paste(result.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS), (x0, y0))
    return Image.composite(canvas, original, soft_mask)
