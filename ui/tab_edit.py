"""The editing modes of the 创作 tab: 图生图, 局部重绘 (a brush in the browser, or a mask file)
and 扩图. The prompt and sampling parameters come from the shared panel; 图生图 can add the
ControlNet tabs' units (Canny + 图生图 is how line art is coloured)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from PIL import Image

from pipelines.errors import ParamError
from pipelines.formats.images import check_upload
from pipelines.requests import (
    INPAINT_FILLS,
    MAX_CROP_PADDING,
    MAX_MASK_BLUR,
    MAX_OUTPAINT,
    MAX_SIDE,
    MIN_SIDE,
    Img2Img,
    Inpaint,
    Outpaint,
    Txt2Img,
)

from . import endpoints, inputs
from .binding import endpoint, request_fields
from .common import GPU, GPU_LIMIT, UIContext
from .panel import API_DEFAULTS, Panel
from .tab_control import DEFAULTS as CONTROL_DEFAULTS, HIRES_PASS_FIELDS, Unit, added_components, added_units

# Each edit endpoint's parameters: their published order (ui/endpoints.py), then any added
# since. The panel's fields an edit uses: no post-step, no draft, no hires pass (the edit is the pass).
ENDPOINTS = {mode: endpoints.names(mode) for mode in ("img2img", "inpaint", "outpaint")}
EDIT_FIELDS = request_fields(Txt2Img, exclude=("draft", "hires_upscaler", "hires_scale", *HIRES_PASS_FIELDS))
DEFAULTS = {**API_DEFAULTS, **CONTROL_DEFAULTS, "denoising_strength": 0.75, "resize_mode": "crop", "save_inputs": False,
            "mask_blur": 4, "inpainting_fill": "original", "inpaint_full_res": False,
            "inpaint_full_res_padding": 32, "inpainting_mask_invert": False}
# The API's defaults are the screen's: 扩图 starts at strength 1 with the surrounding colours,
# 128 pixels to the right.
MODE_DEFAULTS = {"outpaint": {"denoising_strength": 1.0, "inpainting_fill": "fill", "left": 0, "right": 128, "up": 0,
                              "down": 0}}
DOCS = {
    "img2img": "Image to image: `image` denoised from `denoising_strength` at the panel's size (ControlNet units "
               "of the Canny/depth tabs optional). Returns the saved PNGs and a JSON info string.",
    "inpaint": "Inpainting: `image` is the editor's value ({background, layers, composite}: the painted layers are "
               "the mask) or a plain image with `mask` (white = repaint). Returns the saved PNGs and a JSON info string.",
    "outpaint": "Outpainting: `image` extended by left/right/up/down pixels, the new area filled to continue it. "
                "Returns the saved PNGs and a JSON info string.",
}


@dataclass
class Edit:
    image: gr.Image  # 图生图's input
    editor: gr.ImageEditor  # 局部重绘's picture and brush strokes
    outpaint_image: gr.Image
    components: dict  # every component of the three endpoints, by API name, per mode
    buttons: dict  # mode -> its 生成 button
    size_button: gr.Button  # 图生图's "尺寸取自原图"


def _fill_choices(S) -> list[tuple[str, str]]:
    return [(S.fill_labels[name], name) for name in INPAINT_FILLS]


def _save_inputs(S, mode: str) -> gr.Checkbox:
    return gr.Checkbox(False, label=S.save_inputs, elem_id=f"save-inputs-{mode}")


def build_tabs(ctx: UIContext, units: dict[str, Unit]) -> Edit:
    S = ctx.S
    comps: dict[str, dict] = {}
    buttons = {}
    # 1. 图生图.
    with gr.Tab(S.tab_img2img, id="img2img"):
        image = inputs.image(S, label=S.edit_image, type="filepath", sources=["upload", "clipboard"], height=300,
                             report=True, format="png", elem_id="img2img-image")
        strength = inputs.slider(S, 0, 1, value=0.75, step=0.01, label=S.strength_label, info=S.strength_info)
        with gr.Row():
            resize_mode = inputs.radio(S, [(S.resize_crop, "crop"), (S.resize_fit, "fit"), (S.resize_stretch, "stretch")],
                                       value="crop", label=S.resize_mode, scale=3)
            size_button = gr.Button(S.size_from_image, scale=1)
        with gr.Row():
            add_canny = gr.Checkbox(False, label=S.edit_add_canny)
            add_depth = gr.Checkbox(False, label=S.edit_add_depth)
        save_img2img = _save_inputs(S, "img2img")
        buttons["img2img"] = gr.Button(S.generate_img2img, variant="primary", elem_id="generate-img2img",
                                       elem_classes=["generate-button"])
    comps["img2img"] = {"image": image, "denoising_strength": strength, "resize_mode": resize_mode,
                        "save_inputs": save_img2img,
                        **added_components(units, {"add_canny": add_canny, "add_depth": add_depth})}
    # 2. 局部重绘: paint over the picture, or upload a mask.
    with gr.Tab(S.tab_inpaint, id="inpaint"):
        editor = inputs.image_editor(S, label=S.inpaint_editor, type="filepath", sources=["upload", "clipboard"],
                                    brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed",
                                                   default_size=24),
                                    eraser=gr.Eraser(default_size=24), layers=False, transforms=(), format="png",
                                    height=420, elem_id="inpaint-editor")
        gr.Markdown(S.inpaint_hint)
        with gr.Accordion(S.mask_upload_title, open=False):
            mask = inputs.image(S, label=S.mask_upload, type="filepath", sources=["upload", "clipboard"], height=200,
                                report=True, image_mode="RGBA", format="png")
        i_strength = inputs.slider(S, 0, 1, value=0.75, step=0.01, label=S.strength_label)
        with gr.Row():
            blur = inputs.slider(S, 0, MAX_MASK_BLUR, value=4, step=1, label=S.mask_blur_label)
            fill = inputs.radio(S, _fill_choices(S), value="original", label=S.fill_label)
        with gr.Row():
            area = inputs.radio(S, [(S.area_whole, False), (S.area_masked, True)], value=False, label=S.area_label,
                                info=S.area_info)
            padding = inputs.slider(S, 0, MAX_CROP_PADDING, value=32, step=4, label=S.padding_label)
        invert = gr.Checkbox(False, label=S.invert_label)
        save_inpaint = _save_inputs(S, "inpaint")
        buttons["inpaint"] = gr.Button(S.generate_inpaint, variant="primary", elem_id="generate-inpaint",
                                       elem_classes=["generate-button"])
    comps["inpaint"] = {"image": editor, "mask": mask, "denoising_strength": i_strength, "mask_blur": blur,
                        "inpainting_fill": fill, "inpaint_full_res": area, "inpaint_full_res_padding": padding,
                        "inpainting_mask_invert": invert, "save_inputs": save_inpaint}
    # 3. 扩图.
    with gr.Tab(S.tab_outpaint, id="outpaint"):
        o_image = inputs.image(S, label=S.edit_image, type="filepath", sources=["upload", "clipboard"], height=300,
                               report=True, format="png", elem_id="outpaint-image")
        gr.Markdown(S.outpaint_hint)
        sides = {}
        with gr.Row():
            for name in ("left", "right"):
                sides[name] = inputs.slider(S, 0, MAX_OUTPAINT, value=0 if name == "left" else 128, step=8,
                                            label=S.outpaint_sides[name])
        with gr.Row():
            for name in ("up", "down"):
                sides[name] = inputs.slider(S, 0, MAX_OUTPAINT, value=0, step=8, label=S.outpaint_sides[name])
        with gr.Row():
            o_strength = inputs.slider(S, 0, 1, value=1.0, step=0.01, label=S.strength_label, scale=2)
            o_fill = inputs.radio(S, _fill_choices(S), value="fill", label=S.fill_label, scale=3)
        save_outpaint = _save_inputs(S, "outpaint")
        buttons["outpaint"] = gr.Button(S.generate_outpaint, variant="primary", elem_id="generate-outpaint",
                                       elem_classes=["generate-button"])
    comps["outpaint"] = {"image": o_image, "denoising_strength": o_strength, **sides, "inpainting_fill": o_fill,
                         "save_inputs": save_outpaint}
    return Edit(image=image, editor=editor, outpaint_image=o_image, components=comps, buttons=buttons,
                size_button=size_button)


def _editor_parts(value) -> tuple[object, list]:
    """(background, layers) of an editor value; a plain image (an API client's) is a background."""
    if isinstance(value, dict):
        return value.get("background"), [layer for layer in value.get("layers") or () if layer]
    return value, []


def requests_of(mode: str, values: dict):
    """The request of one edit endpoint's values (built in the job, so refusals are worded)."""
    base = Txt2Img.from_fields({k: values[k] for k in EDIT_FIELDS if k in values})
    if mode == "img2img":
        return Img2Img.build(base, values["image"], values["denoising_strength"], values["resize_mode"],
                             added_units(values), values["save_inputs"])
    if mode == "outpaint":
        edit = Img2Img.build(base, values["image"], values["denoising_strength"], save_inputs=values["save_inputs"])
        return Outpaint.build(edit, values["left"], values["right"], values["up"], values["down"],
                              values["inpainting_fill"])
    background, layers = _editor_parts(values["image"])
    edit = Img2Img.build(base, background, values["denoising_strength"], save_inputs=values["save_inputs"])
    # The mask: an uploaded one wins; otherwise the painted layers (the engine reads their strokes).
    mask = values["mask"] or (layers or None)
    return Inpaint.build(edit, mask, values["mask_blur"], values["inpainting_fill"], values["inpaint_full_res"],
                         values["inpaint_full_res_padding"], values["inpainting_mask_invert"])


def wire(ctx: UIContext, panel: Panel, edit: Edit, gallery, info, progress_on) -> None:
    studio = ctx.studio
    jobs = {"img2img": studio.img2img, "inpaint": studio.inpaint, "outpaint": studio.outpaint}
    for mode, button in edit.buttons.items():

        def generate(values: dict, request: gr.Request = None, progress=None, mode=mode):
            yield from panel.run_live(lambda **job: jobs[mode](requests_of(mode, values), **job), request, progress)

        generate.__name__ = f"{mode}_generate"
        event, inputs_ = endpoint(ENDPOINTS[mode], {**panel.fields(), **edit.components[mode]}, generate,
                                  doc=DOCS[mode], defaults={**DEFAULTS, **MODE_DEFAULTS.get(mode, {})})
        button.click(event, inputs_, [gallery, info], api_name=mode, concurrency_id=GPU, concurrency_limit=GPU_LIMIT,
                     show_progress_on=progress_on)

    # "尺寸取自原图": the panel's size from the picture (multiples of 8, within the limits).
    def size_of(path):
        if not path:
            return gr.update(), gr.update()
        try:
            check_upload(path)
            with Image.open(path) as image:
                width, height = image.size
        except (ParamError, OSError):
            return gr.update(), gr.update()
        scale = min(1.0, MAX_SIDE / max(width, height))
        return tuple(max(MIN_SIDE, int(side * scale) // 8 * 8) for side in (width, height))

    edit.size_button.click(size_of, edit.image, [panel.width, panel.height], queue=False, api_visibility="private")
