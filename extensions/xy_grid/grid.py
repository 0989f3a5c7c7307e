"""The X/Y comparison grid: one parameter along X, another along Y, each cell made by the
Studio's own txt2img (the same path, queue and metadata as the 生成 button), stitched into one
PNG with axis labels and saved under outputs/ with the grid's parameters.

Labels are Chinese when a CJK font is on the system (``$DANQING_FONT``, Noto CJK / WenQuanYi /
Source Han at their Debian paths, or whatever ``fc-list :lang=zh`` finds), and readable English
otherwise: never tofu boxes.
"""

from __future__ import annotations

import json
import re
import secrets
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from pipelines.formats.fonts import find_cjk_font, load_font
from pipelines.requests import SEED_MAX, Txt2Img

MAX_VALUES = 16  # per axis
MAX_CELLS = 64


@dataclass(frozen=True)
class Axis:
    key: str
    zh: str  # label with a CJK font
    en: str  # label without one (and the A1111 "X Type" name)
    kind: type
    field: str  # the Studio's txt2img argument ("" for the LoRA weight)


AXES: dict[str, Axis] = {
    "seed": Axis("seed", "种子", "Seed", int, "seed"),
    "cfg": Axis("cfg", "CFG", "CFG scale", float, "guidance_scale"),
    "steps": Axis("steps", "步数", "Steps", int, "num_inference_steps"),
    "sampler": Axis("sampler", "采样器", "Sampler", str, "sampler"),
    "lora_weight": Axis("lora_weight", "LoRA 权重", "LoRA weight", float, ""),
    # A1111's Prompt S/R: the first value is searched for in the prompts, each value replaces it.
    "prompt_sr": Axis("prompt_sr", "提示词替换", "Prompt S/R", str, ""),
    # The base model of each cell (cells of one model run together, the model switched back after).
    "model": Axis("model", "基础模型", "Checkpoint name", str, ""),
}
_QUOTED = re.compile(r'\s*"([^"]*)"|([^,，;；\n]+)')


_RANGE = re.compile(r"^(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)(?:\s*\(\s*\+\s*(\d+(?:\.\d+)?)\s*\))?$")


class GridError(Exception):
    """A request the grid refuses; ``code`` names a sentence in the extension's TEXT."""

    def __init__(self, code: str, **fields) -> None:
        super().__init__(code)
        self.code, self.fields = code, fields


# 1. Axis values --------------------------------------------------------------------------------
def _number(axis: Axis, text: str):
    value = float(text)
    if axis.kind is int:
        if not value.is_integer():
            raise ValueError(text)
        return int(value)
    return value


def parse_values(axis_key: str, text: str) -> list:
    """'1, 2, 3', '1-4' (integers), '5-9 (+2)' (a step), or names for the sampler axis.
    Chinese commas and semicolons separate too."""
    axis = AXES.get(axis_key)
    if axis is None:
        raise GridError("unknown_axis", axis=str(axis_key)[:20])
    values = []
    if axis.kind is str:  # names and texts; a value holding a comma goes in double quotes
        values = [q if q is not None else p.strip() for q, p in
                  ((m.group(1), m.group(2)) for m in _QUOTED.finditer(text or ""))]
        values = [v for v in values if v]
    for part in (() if axis.kind is str else (p.strip() for p in re.split(r"[,，;；\n]+", text or ""))):
        if not part:
            continue
        try:
            match = _RANGE.match(part)
            if match:
                start, end = _number(axis, match[1]), _number(axis, match[2])
                step = _number(axis, match[3]) if match[3] else (1 if axis.kind is int else None)
                if not step or end < start:
                    raise ValueError(part)
                count = int(round((end - start) / step)) + 1
                if count > MAX_VALUES:
                    raise GridError("too_many_values", axis=axis_key, limit=MAX_VALUES)
                values += [axis.kind(round(start + i * step, 6)) for i in range(count)]
            else:
                values.append(_number(axis, part))
        except ValueError:
            raise GridError("bad_value", axis=axis_key, value=part[:40]) from None
    if not values:
        raise GridError("no_values", axis=axis_key)
    if len(values) > MAX_VALUES:
        raise GridError("too_many_values", axis=axis_key, limit=MAX_VALUES)
    return values


def _format(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_request(base: dict, axis_key: str, value, search: str = "") -> dict:
    """The txt2img arguments of one cell: ``base`` with one axis set (``search``: the Prompt S/R
    axis's first value, replaced by ``value`` in both prompts)."""
    request = dict(base)
    axis = AXES[axis_key]
    if axis.field:
        request[axis.field] = value
    elif axis_key == "prompt_sr":
        for field in ("prompt", "negative_prompt"):
            request[field] = (request.get(field) or "").replace(search, value)
    elif axis_key == "model":
        request["model"] = value
    else:
        request["lora_weight"] = value
    return request


def _studio_args(request: dict) -> dict:
    args = {k: v for k, v in request.items() if k not in ("lora", "lora_weight", "model")}
    args["loras"] = [[request["lora"], request.get("lora_weight", 1.0)]] if request.get("lora") else None
    args["num_images_per_prompt"] = 1
    return args


def _check_prompt_sr(base: dict, x_axis: str, x_values: list, y_axis: str, y_values: list) -> str:
    """The Prompt S/R axis's search text (its first value), which must be in a prompt."""
    values = x_values if x_axis == "prompt_sr" else y_values if y_axis == "prompt_sr" else None
    if values is None:
        return ""
    search = values[0]
    if search not in (base.get("prompt") or "") and search not in (base.get("negative_prompt") or ""):
        raise GridError("sr_not_found", value=search[:40])
    return search


def _check_models(studio, x_axis: str, x_values: list, y_axis: str, y_values: list) -> list[str]:
    """The model axis's models (each must be one the studio lists), in order; [] without one."""
    values = x_values if x_axis == "model" else y_values if y_axis == "model" else []
    listed = {c["ref"] for c in studio.model_choices()}
    for value in values:
        if value not in listed:
            raise GridError("unknown_model", value=value[:60])
    return list(dict.fromkeys(values))


def _cell_model(x_axis, x_values, y_axis, y_values, row: int, col: int) -> str:
    return x_values[col] if x_axis == "model" else y_values[row]


# 2. Fonts and drawing ----------------------------------------------------------------------------
def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Lines no wider than ``width``, broken between characters (CJK has no spaces)."""
    lines, line = [], ""
    for char in text:
        if line and draw.textlength(line + char, font=font) > width:
            lines.append(line.rstrip())
            line = char.lstrip()
        else:
            line += char
    return [*lines, line] if line else lines


def draw_grid(cells: list[list[Image.Image]], x_labels: list[str], y_labels: list[str], font_path: str | None) -> tuple[Image.Image, dict]:
    """Cells in rows (Y) and columns (X) under a label row and beside a label column."""
    w, h = cells[0][0].size
    size = max(12, min(36, w // 10))
    font = load_font(font_path, size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, line_h = max(4, size // 3), int(size * 1.3)
    x_lines = [_wrap(probe, label, font, w - 2 * pad) for label in x_labels]
    left_width = min(max(w, 8 * size), max(int(probe.textlength(t, font=font)) for t in y_labels) + 2 * pad)
    y_lines = [_wrap(probe, label, font, left_width - 2 * pad) for label in y_labels]
    top = max(len(lines) for lines in x_lines) * line_h + 2 * pad
    left = left_width
    grid = Image.new("RGB", (left + w * len(x_labels), top + h * len(y_labels)), "white")
    draw = ImageDraw.Draw(grid)
    for col, lines in enumerate(x_lines):
        for n, text in enumerate(lines):
            x = left + col * w + (w - draw.textlength(text, font=font)) / 2
            draw.text((x, pad + n * line_h), text, fill="black", font=font)
    for row, lines in enumerate(y_lines):
        y0 = top + row * h + (h - len(lines) * line_h) / 2
        for n, text in enumerate(lines):
            draw.text((pad, y0 + n * line_h), text, fill="black", font=font)
    for row, images in enumerate(cells):
        for col, image in enumerate(images):
            grid.paste(image.convert("RGB"), (left + col * w, top + row * h))
    return grid, {"left": left, "top": top, "font_size": size}


def axis_labels(axis_key: str, values: list, cjk: bool) -> list[str]:
    axis = AXES[axis_key]
    return [f"{axis.zh if cjk else axis.en}: {_format(v)}" for v in values]


# 3. The grid -------------------------------------------------------------------------------------
def run_grid(studio, base: dict, x_axis: str, x_text: str, y_axis: str, y_text: str, client="xy-grid",
             on_cell=None, font_path: str | None | bool = True, on_image=None, on_step=None) -> tuple[Path, dict]:
    """Generate every cell through ``studio.txt2img``, stitch, save. Returns (path, info).

    ``base``: prompt, negative_prompt, num_inference_steps, guidance_scale, width, height,
    seed, sampler, and optionally lora (a file in models/lora) with lora_weight.
    ``font_path``: True finds a CJK font, None forces the English labels. ``client``: who asks
    (api.caller(request), or a plain client id). ``on_cell(k, n)`` after each cell,
    ``on_image(path, k, n)`` with the cell's saved image (the live view), ``on_step(k, n, step,
    steps)`` within cell k.
    """
    # 1. Axes and values; one seed for every cell unless the seed is an axis.
    if x_axis == y_axis:
        raise GridError("same_axis")
    x_values, y_values = parse_values(x_axis, x_text), parse_values(y_axis, y_text)
    if len(x_values) * len(y_values) > MAX_CELLS:
        raise GridError("too_many_cells", count=len(x_values) * len(y_values), limit=MAX_CELLS)
    if "lora_weight" in (x_axis, y_axis) and not base.get("lora"):
        raise GridError("lora_needed")
    base = dict(base)
    if str(base.get("seed", -1)).strip() in ("-1", "") and "seed" not in (x_axis, y_axis):
        base["seed"] = secrets.randbelow(SEED_MAX + 1)
    search = _check_prompt_sr(base, x_axis, x_values, y_axis, y_values)
    models = _check_models(studio, x_axis, x_values, y_axis, y_values)
    # 2. Every cell through the Studio (validation, queue, LoRA switching, saving); with a model
    # axis the cells of one model run together, holding the GPU, and the model is switched back.
    total = len(x_values) * len(y_values)
    order = [(row, col) for row in range(len(y_values)) for col in range(len(x_values))]
    groups: list[tuple[str | None, list]] = [(None, order)]
    if models:
        groups = [(ref, [(r, c) for r, c in order if _cell_model(x_axis, x_values, y_axis, y_values, r, c) == ref])
                  for ref in models]
    made: dict[tuple[int, int], tuple[Image.Image, str, str]] = {}
    for ref, cells_of in groups:
        with (studio.on_model(ref, client) if ref is not None else nullcontext()):
            for row, col in cells_of:
                request = cell_request(cell_request(base, y_axis, y_values[row], search), x_axis, x_values[col], search)
                cell = len(made) + 1
                step_hook = (lambda i, n, cell=cell: on_step(cell, total, i, n)) if on_step is not None else None
                paths, info = studio.txt2img(Txt2Img.from_fields(_studio_args(request)), client=client,
                                             on_step=step_hook)
                with Image.open(paths[0]) as image:
                    made[row, col] = (image.copy(), image.info.get("parameters", ""), info["files"][0])
                if on_cell is not None:
                    on_cell(cell, total)
                if on_image is not None:
                    on_image(paths[0], cell, total)
    cells = [[made[row, col][0] for col in range(len(x_values))] for row in range(len(y_values))]
    files = [made[row, col][2] for row in range(len(y_values)) for col in range(len(x_values))]
    first_text = made[0, 0][1]
    # 3. Labels (Chinese with a CJK font), the grid image, saved with its parameters.
    font = find_cjk_font() if font_path is True else font_path
    x_labels, y_labels = axis_labels(x_axis, x_values, bool(font)), axis_labels(y_axis, y_values, bool(font))
    grid, layout = draw_grid(cells, x_labels, y_labels, font)
    fields = {
        "Script": "X/Y plot",
        "X Type": AXES[x_axis].en, "X Values": ", ".join(map(_format, x_values)),
        "Y Type": AXES[y_axis].en, "Y Values": ", ".join(map(_format, y_values)),
    }
    extra = ", ".join(f"{k}: {json.dumps(v, ensure_ascii=False) if ',' in v else v}" for k, v in fields.items())
    seed = x_values[0] if x_axis == "seed" else y_values[0] if y_axis == "seed" else int(base["seed"])
    path = studio.save(grid, f"{first_text}, {extra}" if first_text else extra, seed, suffix="-xy",
                       user=getattr(client, "user", ""))
    info = {
        "file": path.name, "size": list(grid.size), "cell_size": list(cells[0][0].size),
        "columns": len(x_values), "rows": len(y_values), "left": layout["left"], "top": layout["top"],
        "x": {"axis": x_axis, "values": x_values, "labels": x_labels},
        "y": {"axis": y_axis, "values": y_values, "labels": y_labels},
        "font": font or None, "cells": files, "seed": base.get("seed"),
    }
    return path, info
