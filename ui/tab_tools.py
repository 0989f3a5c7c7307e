"""The tool tabs: 超分辨率 (standalone ESRGAN), 图片信息 (PNG info), 历史 (ui/tab_history.py), 系统信息."""

from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr

from pipelines.errors import JobCancelled
from pipelines.requests import Upscale

from . import inputs, queue_panel, tab_history
from .summary import summarize
from .system_view import system_markdown
from .common import GPU, GPU_LIMIT, UIContext, caller_of, choices, user_error, user_of


@dataclass
class Tools:
    png_text: gr.Textbox
    send: gr.Button
    system: gr.JSON
    recent: gr.Gallery
    chosen: gr.Textbox  # the path of the image picked in 历史 (hidden)
    send_recent: gr.Button
    inspect_recent: gr.Button
    png: gr.Image
    recent_to_img2img: gr.Button
    recent_to_inpaint: gr.Button
    png_to_img2img: gr.Button
    png_to_inpaint: gr.Button
    recent_to_outpaint: gr.Button
    png_to_outpaint: gr.Button
    admin_only: gr.Accordion  # 用量
    for_user: object  # (request) -> admin_only's visibility
    queue_timer: gr.Timer  # refreshes 任务队列 while 系统信息 is open


def build_tabs(ctx: UIContext) -> Tools:
    S, studio = ctx.S, ctx.studio

    # 1. Super-resolution.
    with gr.Tab(S.tab_upscale, id="upscale"):
        with gr.Row():
            with gr.Column():
                files = gr.File(label=S.upscale_upload, file_count="multiple", file_types=["image"],
                                elem_id="upscale-files")
                names = studio.upscalers()
                upscaler = inputs.dropdown(S, choices(names), value=names[0] if names else None, label=S.upscaler_label)
                scale = inputs.radio(S, [("×2", 2), ("×4", 4)], value=4, label=S.upscale_scale)
                run = gr.Button(S.upscale_run, variant="primary")
                refresh = gr.Button(S.refresh)
                if not names:
                    gr.Markdown(S.upscale_none)
            with gr.Column():
                # What was made, in words; the JSON stays the API's second output.
                upscale_summary = gr.Markdown(elem_id="upscale-summary", min_height=48, elem_classes=["clean-progress"])
                results = gr.Gallery(label=S.gallery_label, columns=2, format="png", object_fit="contain",
                                     elem_id="upscale-results", elem_classes=["whole-pictures"])
                info = gr.Code(label=S.info_label, language="json", lines=6, interactive=False, visible=False)

    def upscale(image: str, upscaler: str, scale: int = 4, request: gr.Request = None, progress=gr.Progress()):
        """Upscale one or several images (file paths) with an ESRGAN model; returns the saved PNGs."""
        paths = image if isinstance(image, list) else [image] if image else []
        try:
            saved, meta = studio.upscale_images(
                [_path_of(p) for p in paths], Upscale.from_fields(upscaler=upscaler, scale=scale), client=caller_of(request),
                on_step=lambda i, n: progress((i, n), desc=S.progress_upscaling.format(step=i, total=n)),
            )
        except JobCancelled:
            gr.Warning(S.stopped)
            return [], "{}"
        except Exception as exc:
            raise user_error(S, exc) from None
        return [str(p) for p in saved], json.dumps(meta, ensure_ascii=False, indent=2)

    run.click(upscale, [files, upscaler, scale], [results, info], api_name="upscale", concurrency_id=GPU,
              concurrency_limit=GPU_LIMIT, show_progress_on=upscale_summary)
    info.change(lambda text: summarize(S, text)[0], info, upscale_summary, queue=False, api_visibility="private")
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
                    png_to_outpaint = gr.Button(S.send_to_outpaint, elem_id="png-to-outpaint")

    def read_png(image):
        if image is None:
            return ""
        return studio.png_parameters(image) or S.pnginfo_none

    png.change(read_png, png, png_text, api_name="png_info")

    # 3. 历史: every saved image, searchable (ui/tab_history.py).
    saved = tab_history.build_tab(ctx)

    # 4. System info.
    with gr.Tab(S.tab_system, id="system") as system_tab:
        line = queue_panel.build(ctx)
        system_view = gr.Markdown(elem_id="system-view")
        with gr.Accordion(S.system_json, open=False):
            system = gr.JSON(label=S.tab_system)
        refresh_system = gr.Button(S.system_refresh)
    system.change(lambda info: system_markdown(S, info), system, system_view, queue=False, api_visibility="private")
    refresh_system.click(studio.system_info, None, system, queue=False, api_name="system_info")
    system_tab.select(line.fill, None, line.outputs, queue=False, api_visibility="private")
    system_tab.select(studio.system_info, None, system, queue=False, api_visibility="private")

    def for_user(request: gr.Request = None):
        """用量 is shown to administrators only (everyone, without logins)."""
        return gr.Accordion(visible=ctx.options.team.is_admin(user_of(request)))
    return Tools(png_text=png_text, send=send, system=system, recent=saved.gallery, chosen=saved.chosen,
                 send_recent=saved.send, inspect_recent=saved.inspect, png=png,
                 recent_to_img2img=saved.to_img2img, recent_to_inpaint=saved.to_inpaint,
                 png_to_img2img=png_to_img2img, png_to_inpaint=png_to_inpaint,
                 recent_to_outpaint=saved.to_outpaint, png_to_outpaint=png_to_outpaint,
                 admin_only=line.usage, for_user=for_user, queue_timer=line.timer)


def _path_of(upload) -> str:
    """The temporary path of an uploaded file (the studio checks and decodes it)."""
    return upload if isinstance(upload, str) else getattr(upload, "name", upload)
