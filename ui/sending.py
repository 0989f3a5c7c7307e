"""Sending a picture and its parameters to where it is used next: from a result, from 历史 or
from 图片信息 to 文生图 / 图生图 / 局部重绘 / 扩图. The parameters pick the mode, as A1111's
"send to" buttons do: an inpainted image goes back to 局部重绘, an img2img one to 图生图, a
hires-fixed one to 文生图 with 高清修复 on.

A result is the picture on screen: the one picked in a batch, else the first — read from the
gallery when the button is pressed, never from an earlier click. No picture (or a live preview
of a job still running) is said in Chinese, and nothing changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gradio as gr

from pipelines.formats.pnginfo import edit_mode, parse_parameters
from pipelines.requests import INPAINT_FILL_NAMES

from .common import user_of
from .panel import Panel, send_parameters_targets
from .tab_edit import Edit

FILLS = {name: fill for fill, name in INPAINT_FILL_NAMES.items()}  # A1111's name → ours
EDIT_MODES = ("img2img", "inpaint", "outpaint")


def mode_of(fields: dict) -> str:
    """The 创作 mode a picture's parameters came from."""
    return edit_mode(fields)


@dataclass(frozen=True)
class Source:
    """A send button: the components it reads, how their values give the picture (a saved
    file's path, a PIL image, or None), and the mode it sends to (None: the one the
    parameters name, parameters only for 文生图)."""

    button: gr.Button
    inputs: list
    picture: Callable
    mode: str | None


def gallery_picture(items, index) -> str | None:
    """The path of the picture on screen in a result gallery: the picked one, else the first."""
    items = list(items or [])
    if not items:
        return None
    try:
        k = int(index or 0)
    except (TypeError, ValueError):
        k = 0
    item = items[k if 0 <= k < len(items) else 0]
    path = item[0] if isinstance(item, (list, tuple)) else item
    return getattr(path, "path", path) if path else None


def wire(panel: Panel, edit: Edit, tabs, modes, sources: list[Source]) -> None:
    S, studio = panel.ctx.S, panel.ctx.studio
    comps = edit.components
    strengths = [comps[m]["denoising_strength"] for m in EDIT_MODES]
    form_targets = send_parameters_targets(panel)
    targets = [tabs, *form_targets, modes, edit.image, edit.editor, edit.outpaint_image,
               *strengths, comps["inpaint"]["mask_blur"], comps["inpaint"]["inpainting_fill"],
               comps["inpaint"]["inpaint_full_res"]]
    keep = gr.update()
    names = {"txt2img": S.tab_txt2img, "img2img": S.tab_img2img, "inpaint": S.tab_inpaint, "outpaint": S.tab_outpaint}

    def send(picture, mode: str | None, request: gr.Request = None):
        # 1. The picture and its parameters text (a path must be the user's own saved image).
        if picture is None:
            gr.Warning(S.send_nothing)
            return [keep] * len(targets)
        if isinstance(picture, str):
            own = studio.own_output(picture, user_of(request))
            if own is None:
                gr.Warning(S.send_not_ready)
                return [keep] * len(targets)
            picture, text, label = str(own), studio.saved_parameters(own) or "", own.name
        else:
            text, label = studio.png_parameters(picture) or "", ""
        fields = parse_parameters(text)["fields"]
        mode = mode or mode_of(fields)
        # 2. The form, the mode's tab, its picture and its settings.
        form = panel.send_parameters(text) if text else [gr.Tabs(selected="create")] + [keep] * len(form_targets)
        images = [keep, keep, keep]
        if mode != "txt2img":
            images[EDIT_MODES.index(mode)] = picture
        try:
            strength = float(fields["Denoising strength"]) if mode != "txt2img" else None
        except (KeyError, ValueError):
            strength = None
        settings = [keep if strength is None else strength] * 3
        try:
            blur = int(fields["Mask blur"])
        except (KeyError, ValueError):
            blur = keep
        fill = FILLS.get(fields.get("Masked content", ""), keep)
        area = {"Only masked": True, "Whole picture": False}.get(fields.get("Inpaint area", ""), keep)
        if label:
            gr.Info(S.sent_picture.format(mode=names[mode], name=label))
        return [*form, gr.Tabs(selected=mode), *images, *settings, blur, fill, area]

    def event_of(source: Source):
        """The click event of one source: one positional parameter per input (Gradio fills
        gr.Request only there); results read two (the gallery and its picked index)."""
        read, mode = source.picture, source.mode
        if len(source.inputs) == 2:
            def event(first, second, request: gr.Request = None):
                return send(read(first, second), mode, request)
        else:
            def event(first, request: gr.Request = None):
                return send(read(first), mode, request)
        return event

    slots = [*panel.lora_names, *panel.lora_weights]
    for source in sources:
        # Queued (Gradio delivers toasts only to queued events); then the slots' descriptions and
        # the job's LoRA list, once the parameters have arrived.
        source.button.click(event_of(source), source.inputs, targets, api_visibility="private",
                            show_progress="hidden").then(
            panel.gather_loras, slots, panel.gathered(), queue=False, api_visibility="private")
