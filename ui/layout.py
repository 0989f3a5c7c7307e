"""The Gradio UI: layout and event wiring only.

It never imports torch or diffusers: everything it runs goes through the ``studio`` object
that app.py passes in (pipelines.service.Studio). GPU work runs under one concurrency id, so
jobs from different users never interleave; stop is per browser session.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import gradio as gr

from pipelines.errors import DanqingError, JobCancelled
from pipelines.params import (
    DEFAULT_SAMPLER,
    MAX_CFG,
    MAX_IMAGES,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    SAMPLER_NAMES,
)
from pipelines.pnginfo import parse_parameters

from .strings import error_text, load

log = logging.getLogger(__name__)

GPU = "gpu"  # the one concurrency id of every event that touches the model


@dataclass(frozen=True)
class UIOptions:
    """What the UI needs to know about how the app was started."""

    demo: bool = False
    missing_model: str | None = None  # a configured model that could not be found
    missing_folder: str = "models/checkpoints/"
    download_pending: str | None = None  # a configured hub model that will download on first use
    default_size: int = 512
    lang: str | None = None


def _client(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def user_error(S, exc: BaseException) -> gr.Error:
    """A Chinese gr.Error for any failure; unexpected ones are logged with their traceback."""
    if isinstance(exc, DanqingError):
        return gr.Error(error_text(S, exc.code, exc.fields))
    log.exception("unexpected error in a UI event", exc_info=exc)
    return gr.Error(error_text(S, "internal"))


def model_dropdown_choices(S, studio) -> list[tuple[str, str]]:
    return [
        ((S.model_local if c["local"] else S.model_remote).format(name=c["ref"]), c["ref"])
        for c in studio.model_choices()
    ]


def build_ui(studio, options: UIOptions = UIOptions()) -> gr.Blocks:
    S = load(options.lang)
    with gr.Blocks(title=S.title, analytics_enabled=False) as demo:
        # 1. Header and banners.
        gr.Markdown(f"# {S.title}\n{S.subtitle}")
        if options.demo:
            gr.Markdown(S.demo_banner, elem_id="demo-banner")
        if options.missing_model:
            gr.Markdown(
                S.missing_model_banner.format(model=options.missing_model, folder=options.missing_folder),
                elem_id="missing-model-banner",
            )
        if options.download_pending:
            gr.Markdown(S.download_banner.format(model=options.download_pending))

        # 2. Base model switcher.
        with gr.Row():
            model = gr.Dropdown(
                choices=model_dropdown_choices(S, studio),
                value=studio.store.current_ref,
                label=S.model_label,
                scale=4,
            )
            refresh_models = gr.Button(S.refresh, scale=1)

        with gr.Tabs() as tabs:
            # 3. Text to image.
            with gr.Tab(S.tab_txt2img, id="txt2img"):
                with gr.Row():
                    with gr.Column(scale=1):
                        prompt = gr.Textbox(label=S.prompt_label, placeholder=S.prompt_placeholder, lines=3)
                        negative = gr.Textbox(value="", label=S.negative_label, placeholder=S.negative_placeholder, lines=2)
                        sampler = gr.Dropdown(
                            choices=[(S.sampler_labels[n], n) for n in SAMPLER_NAMES],
                            value=DEFAULT_SAMPLER,
                            label=S.sampler_label,
                        )
                        steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label=S.steps_label)
                        cfg = gr.Slider(0, MAX_CFG, value=7.0, step=0.5, label=S.cfg_label)
                        with gr.Row():
                            width = gr.Slider(MIN_SIDE, MAX_SIDE, value=options.default_size, step=8, label=S.width_label)
                            height = gr.Slider(MIN_SIDE, MAX_SIDE, value=options.default_size, step=8, label=S.height_label)
                        with gr.Row():
                            seed = gr.Number(value=-1, precision=0, label=S.seed_label, scale=3)
                            random_seed = gr.Button(S.random_seed, scale=1)
                            reuse_seed = gr.Button(S.reuse_seed, scale=1)
                        batch = gr.Slider(1, MAX_IMAGES, value=1, step=1, label=S.batch_label)
                        with gr.Row():
                            generate = gr.Button(S.generate, variant="primary", elem_id="generate")
                            stop = gr.Button(S.stop, variant="stop", elem_id="stop")
                    with gr.Column(scale=1):
                        gallery = gr.Gallery(label=S.gallery_label, columns=2, height=520, format="png", elem_id="gallery")
                        info = gr.Code(label=S.info_label, language="json", lines=8, interactive=False)

            # 4. PNG info.
            with gr.Tab(S.tab_pnginfo, id="pnginfo"):
                with gr.Row():
                    png = gr.Image(label=S.pnginfo_upload, type="pil", image_mode=None, sources=["upload", "clipboard"])
                    with gr.Column():
                        png_text = gr.Textbox(label=S.pnginfo_text, lines=8, interactive=False)
                        send = gr.Button(S.send_to_txt2img)

            # 5. Gallery of saved images.
            with gr.Tab(S.tab_gallery, id="gallery"):
                recent = gr.Gallery(label=S.gallery_recent, columns=4, height=640, format="png")
                refresh_recent = gr.Button(S.refresh)

            # 6. System info.
            with gr.Tab(S.tab_system, id="system"):
                system = gr.JSON(label=S.tab_system)
                refresh_system = gr.Button(S.system_refresh)

        # -- events ---------------------------------------------------------------------
        def txt2img(
            prompt: str,
            negative_prompt: str = "",
            num_inference_steps: int = 20,
            guidance_scale: float = 7.0,
            width: int = 512,
            height: int = 512,
            seed: int = -1,
            num_images_per_prompt: int = 1,
            sampler: str = DEFAULT_SAMPLER,
            request: gr.Request = None,
            progress=gr.Progress(),
        ):
            """Text to image. Returns the saved PNG files and a JSON info string (seed, all parameters)."""
            if not studio.store.is_loaded():
                progress(0, desc=S.progress_loading)
            try:
                paths, meta = studio.txt2img(
                    client=_client(request),
                    on_step=lambda i, n: progress((i, n), desc=S.progress_sampling),
                    prompt=prompt,
                    negative_prompt=negative_prompt,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    width=width,
                    height=height,
                    seed=seed,
                    num_images_per_prompt=num_images_per_prompt,
                    sampler=sampler,
                )
            except JobCancelled:
                gr.Warning(S.stopped)
                return [], json.dumps({"cancelled": True}, ensure_ascii=False)
            except Exception as exc:
                raise user_error(S, exc) from None
            return [str(p) for p in paths], json.dumps(meta, ensure_ascii=False, indent=2)

        gen_event = generate.click(
            txt2img,
            inputs=[prompt, negative, steps, cfg, width, height, seed, batch, sampler],
            outputs=[gallery, info],
            api_name="txt2img",
            concurrency_id=GPU,
            concurrency_limit=1,
        )
        prompt.submit(
            txt2img,
            inputs=[prompt, negative, steps, cfg, width, height, seed, batch, sampler],
            outputs=[gallery, info],
            api_visibility="private",
            concurrency_id=GPU,
            concurrency_limit=1,
        )

        def stop_job(request: gr.Request = None) -> None:
            studio.stop(_client(request))

        stop.click(stop_job, None, None, queue=False, api_name="stop")

        random_seed.click(lambda: -1, None, seed, queue=False, api_visibility="private")

        def last_seed(info_text: str):
            try:
                return int(json.loads(info_text or "{}")["seed"])
            except (ValueError, KeyError, TypeError):
                return -1

        reuse_seed.click(last_seed, info, seed, queue=False, api_visibility="private")

        def switch_model(ref: str, progress=gr.Progress()):
            progress(0, desc=S.progress_loading)
            try:
                studio.switch_model(ref)
            except Exception as exc:
                raise user_error(S, exc) from None
            gr.Info(S.model_switched.format(name=ref))
            return studio.system_info()

        model.input(switch_model, model, system, api_name="switch_model", concurrency_id=GPU, concurrency_limit=1)

        def refresh_model_list():
            return gr.Dropdown(choices=model_dropdown_choices(S, studio), value=studio.store.current_ref)

        refresh_models.click(refresh_model_list, None, model, queue=False, api_visibility="private")

        def read_png(image):
            if image is None:
                return ""
            return studio.png_parameters(image) or S.pnginfo_none

        png.change(read_png, png, png_text, api_name="png_info")

        def send_parameters(text: str):
            parsed = parse_parameters(text or "")
            fields = parsed["fields"]
            values = [gr.Tabs(selected="txt2img"), parsed["prompt"], parsed["negative_prompt"]]
            try:
                w, h = (int(v) for v in fields.get("Size", "").split("x"))
            except ValueError:
                w = h = None
            updates = {
                steps: fields.get("Steps"),
                cfg: fields.get("CFG scale"),
                seed: fields.get("Seed"),
                width: w,
                height: h,
                sampler: fields.get("Sampler") if fields.get("Sampler") in SAMPLER_NAMES else None,
            }
            for component, value in updates.items():
                values.append(gr.update() if value in (None, "") else float(value) if component is not sampler else value)
            return values

        send.click(
            send_parameters,
            png_text,
            [tabs, prompt, negative, steps, cfg, seed, width, height, sampler],
            queue=False,
            api_visibility="private",
        )

        refresh_recent.click(lambda: [str(p) for p in studio.recent_outputs()], None, recent, queue=False, api_visibility="private")
        refresh_system.click(studio.system_info, None, system, queue=False, api_name="system_info")
        demo.load(studio.system_info, None, system, api_visibility="private")
    return demo
