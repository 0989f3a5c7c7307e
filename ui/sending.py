"""Sending a picture and its parameters to where it is used next: from a result, from 历史 or
from 图片信息 to 文生图 / 图生图 / 局部重绘 / 扩图. The parameters pick the mode, as A1111's
"send to" buttons do: an inpainted image goes back to 局部重绘, an img2img one to 图生图, a
hires-fixed one to 文生图 with 高清修复 on."""

from __future__ import annotations

import gradio as gr

from pipelines.formats.pnginfo import edit_mode, parse_parameters
from pipelines.requests import INPAINT_FILL_NAMES

from .common import user_of
from .panel import Panel, send_parameters_targets
from .tab_edit import Edit

FILLS = {name: fill for fill, name in INPAINT_FILL_NAMES.items()}  # A1111's name → ours


def mode_of(fields: dict) -> str:
    """The 创作 mode a picture's parameters came from."""
    return edit_mode(fields)


def wire(panel: Panel, edit: Edit, tabs, modes, sources: list) -> None:
    """``sources``: (button, component holding the picture, mode or None) triples. The component
    holds a path (a gallery pick: checked to be the user's own saved image) or a PIL image
    (图片信息). Mode None: the mode the parameters name (parameters only for 文生图)."""
    studio = panel.ctx.studio
    comps = edit.components
    strengths = [comps[m]["denoising_strength"] for m in ("img2img", "inpaint", "outpaint")]
    form_targets = send_parameters_targets(panel)
    targets = [tabs, *form_targets, modes, edit.image, edit.editor, edit.outpaint_image,
               *strengths, comps["inpaint"]["mask_blur"], comps["inpaint"]["inpainting_fill"],
               comps["inpaint"]["inpaint_full_res"]]
    keep = gr.update()

    def send(picture, mode: str | None, request: gr.Request = None):
        # 1. The picture and its parameters text (a path must be the user's own saved image).
        if isinstance(picture, str) or picture is None:
            own = studio.own_output(picture, user_of(request)) if picture else None
            if own is None:
                return [keep] * len(targets)
            picture, text = str(own), studio.saved_parameters(own) or ""
        else:
            text = studio.png_parameters(picture) or ""
        fields = parse_parameters(text)["fields"]
        mode = mode or mode_of(fields)
        # 2. The form, the mode's tab, its picture and its settings.
        form = panel.send_parameters(text) if text else [gr.Tabs(selected="create")] + [keep] * len(form_targets)
        images = [keep, keep, keep]
        if mode != "txt2img":
            images[("img2img", "inpaint", "outpaint").index(mode)] = picture
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
        return [*form, gr.Tabs(selected=mode), *images, *settings, blur, fill, area]

    def sender(mode: str | None):
        def event(picture, request: gr.Request = None):
            return send(picture, mode, request)

        return event

    for button, holder, mode in sources:
        button.click(sender(mode), holder, targets, queue=False, api_visibility="private")
