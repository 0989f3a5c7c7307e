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

from pipelines.formats import infotext

from .common import user_of
from .panel import Panel
from .tab_edit import Edit

EDIT_MODES = ("img2img", "inpaint", "outpaint")


def mode_of(fields: dict) -> str:
    """The 创作 mode a picture's A1111 fields came from."""
    return infotext.mode_of(fields)


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
    pictures = {"img2img": edit.image, "inpaint": edit.editor, "outpaint": edit.outpaint_image}
    # What an edit's settings are, by the edit endpoints' field names, in each mode's tab.
    settings = {"denoising_strength": [comps[m]["denoising_strength"] for m in EDIT_MODES],
                **{name: [comps["inpaint"][name]] for name in ("mask_blur", "inpainting_fill", "inpaint_full_res")}}
    targets = list(dict.fromkeys([tabs, modes, *panel.send_targets(), *pictures.values(),
                                  *(c for group in settings.values() for c in group)]))
    names = {"txt2img": S.tab_txt2img, "img2img": S.tab_img2img, "inpaint": S.tab_inpaint, "outpaint": S.tab_outpaint}

    def send(picture, mode: str | None, request: gr.Request = None) -> dict:
        """{component: value}: the form from the picture's parameters (by field name), the mode's
        tab, its picture and its settings; {} (nothing changes) when there is nothing to send."""
        # 1. The picture and its parameters text (a path must be the user's own saved image).
        if picture is None:
            gr.Warning(S.send_nothing)
            return {}
        if isinstance(picture, str):
            own = studio.own_output(picture, user_of(request))
            if own is None:
                gr.Warning(S.send_not_ready)
                return {}
            picture, text, label = str(own), studio.saved_parameters(own) or "", own.name
        else:
            text, label = studio.png_parameters(picture) or "", ""
        read = infotext.read(text)
        mode = mode or read.mode
        # 2. The form, the mode's tab, its picture and its settings.
        out = {**(panel.send_parameters(text) if text else {}), tabs: gr.Tabs(selected="create"),
               modes: gr.Tabs(selected=mode)}
        if mode != "txt2img":
            out[pictures[mode]] = picture
            for name, value in read.edit.items():
                for control in settings.get(name, ()):
                    out[control] = value
        if label:
            gr.Info(S.sent_picture.format(mode=names[mode], name=label))
        return out

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
