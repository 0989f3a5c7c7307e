"""The tool tabs: 超分辨率 (standalone ESRGAN), 图片信息 (PNG info), 图库, 系统信息."""

from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr

from pipelines.errors import JobCancelled
from pipelines.requests import Upscale

from . import inputs
from .system_view import system_markdown
from .common import GPU, UIContext, caller_of, choices, selected_path, user_error, user_of


@dataclass
class Tools:
    png_text: gr.Textbox
    send: gr.Button
    system: gr.JSON
    recent: gr.Gallery
    chosen: gr.Textbox  # the path of the image picked in 图库 (hidden)
    send_recent: gr.Button
    inspect_recent: gr.Button
    png: gr.Image
    recent_to_img2img: gr.Button
    recent_to_inpaint: gr.Button
    png_to_img2img: gr.Button
    png_to_inpaint: gr.Button


def build_tabs(ctx: UIContext) -> Tools:
    S, studio = ctx.S, ctx.studio

    # 1. Super-resolution.
    with gr.Tab(S.tab_upscale, id="upscale"):
        with gr.Row():
            with gr.Column():
                files = gr.File(label=S.upscale_upload, file_count="multiple", file_types=["image"])
                names = studio.upscalers()
                upscaler = inputs.dropdown(S, choices(names), value=names[0] if names else None, label=S.upscaler_label)
                scale = inputs.radio(S, [("×2", 2), ("×4", 4)], value=4, label=S.upscale_scale)
                run = gr.Button(S.upscale_run, variant="primary")
                refresh = gr.Button(S.refresh)
                if not names:
                    gr.Markdown(S.upscale_none)
            with gr.Column():
                results = gr.Gallery(label=S.gallery_label, columns=2, height=520, format="png", object_fit="contain")
                info = gr.Code(label=S.info_label, language="json", lines=6, interactive=False)

    def upscale(image: str, upscaler: str, scale: int = 4, request: gr.Request = None, progress=gr.Progress()):
        """Upscale one or several images (file paths) with an ESRGAN model; returns the saved PNGs."""
        paths = image if isinstance(image, list) else [image] if image else []
        try:
            saved, meta = studio.upscale_images(
                [_path_of(p) for p in paths], Upscale.from_fields(upscaler=upscaler, scale=scale), client=caller_of(request),
                on_step=lambda i, n: progress((i, n), desc=S.progress_upscaling),
            )
        except JobCancelled:
            gr.Warning(S.stopped)
            return [], "{}"
        except Exception as exc:
            raise user_error(S, exc) from None
        return [str(p) for p in saved], json.dumps(meta, ensure_ascii=False, indent=2)

    run.click(upscale, [files, upscaler, scale], [results, info], api_name="upscale", concurrency_id=GPU, concurrency_limit=1)
    refresh.click(lambda: gr.Dropdown(choices=choices(studio.upscalers())), None, upscaler, queue=False, api_visibility="private")

    # 2. PNG info.
    with gr.Tab(S.tab_pnginfo, id="pnginfo"):
        with gr.Row():
            png = inputs.image(S, label=S.pnginfo_upload, type="pil", image_mode=None, sources=["upload", "clipboard"], elem_id="png-upload")
            with gr.Column():
                png_text = gr.Textbox(label=S.pnginfo_text, lines=8, interactive=False)
                send = gr.Button(S.send_to_create, elem_id="png-send")
                with gr.Row():
                    png_to_img2img = gr.Button(S.send_to_img2img, elem_id="png-to-img2img")
                    png_to_inpaint = gr.Button(S.send_to_inpaint, elem_id="png-to-inpaint")

    def read_png(image):
        if image is None:
            return ""
        return studio.png_parameters(image) or S.pnginfo_none

    png.change(read_png, png, png_text, api_name="png_info")

    # 3. Saved images: filled when the tab opens (and on 刷新), captioned with their prompts; the
    #    selected one can be sent to 创作 (its parameters) or to 图片信息.
    with gr.Tab(S.tab_gallery, id="gallery") as gallery_tab:
        recent = gr.Gallery(label=S.gallery_recent, columns=4, height=640, format="png", object_fit="contain", preview=False,
                            elem_id="recent")
        # The picked image's path (checked again on use: the page may send anything back). A hidden
        # box rather than gr.State: a State makes every page hold a heartbeat stream open.
        chosen = gr.Textbox(visible=False)
        with gr.Row():
            send_recent = gr.Button(S.send_to_create, elem_id="recent-send")
            recent_to_img2img = gr.Button(S.send_to_img2img, elem_id="recent-to-img2img")
            recent_to_inpaint = gr.Button(S.send_to_inpaint, elem_id="recent-to-inpaint")
            inspect_recent = gr.Button(S.send_to_pnginfo, elem_id="recent-inspect")
            refresh_recent = gr.Button(S.refresh)

    def my_outputs(request: gr.Request = None) -> list[tuple[str, str]]:
        """The newest images of this user (with --auth each user sees only their own)."""
        return [(str(path), caption) for path, caption in studio.recent_captioned(user=user_of(request))]

    for trigger in (gallery_tab.select, refresh_recent.click):
        trigger(my_outputs, None, recent, queue=False, api_visibility="private")
    recent.select(selected_path, None, chosen, queue=False, api_visibility="private")

    # 4. System info.
    with gr.Tab(S.tab_system, id="system"):
        system_view = gr.Markdown(elem_id="system-view")
        with gr.Accordion(S.system_json, open=False):
            system = gr.JSON(label=S.tab_system)
        refresh_system = gr.Button(S.system_refresh)
    system.change(lambda info: system_markdown(S, info), system, system_view, queue=False, api_visibility="private")
    refresh_system.click(studio.system_info, None, system, queue=False, api_name="system_info")
    return Tools(png_text=png_text, send=send, system=system, recent=recent, chosen=chosen, send_recent=send_recent,
                 inspect_recent=inspect_recent, png=png,
                 recent_to_img2img=recent_to_img2img, recent_to_inpaint=recent_to_inpaint,
                 png_to_img2img=png_to_img2img, png_to_inpaint=png_to_inpaint)


def _path_of(upload) -> str:
    """The temporary path of an uploaded file (the studio checks and decodes it)."""
    return upload if isinstance(upload, str) else getattr(upload, "name", upload)
