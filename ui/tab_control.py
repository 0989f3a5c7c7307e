"""The ControlNet modes of the 创作 tab: 线稿控制 (Canny) and 深度控制 (depth).

Each tab has its control image, a preview of the control map (or a ready-made map), the
ControlNet model and its weight and guidance window; either tab can also add the other tab's
unit (multi-ControlNet). The prompt and sampling parameters come from the shared panel.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from . import inputs
from .common import GPU, UIContext, choices, user_error
from .panel import Panel


@dataclass
class Unit:
    kind: str  # "canny" | "depth"
    image: gr.Image
    is_map: gr.Checkbox
    preview: gr.Image
    preview_button: gr.Button
    model: gr.Dropdown
    weight: gr.Slider
    start: gr.Slider
    end: gr.Slider
    low: gr.Slider | None = None
    high: gr.Slider | None = None
    estimator: gr.Dropdown | None = None
    combine: gr.Checkbox | None = None
    resize_mode: gr.Radio | None = None
    generate: gr.Button | None = None


def _models_for(names: list[str], kind: str) -> list[str]:
    """ControlNets whose name mentions the kind first (a convention all published ones follow)."""
    return sorted(names, key=lambda n: (kind not in n.lower(), n))


def build_tabs(ctx: UIContext, panel: Panel) -> dict[str, Unit]:
    S, studio = ctx.S, ctx.studio
    names = studio.controlnets()
    units = {}
    for kind, title in (("canny", S.tab_canny), ("depth", S.tab_depth)):
        with gr.Tab(title, id=kind):
            with gr.Row():
                image = inputs.image(S, label=S.control_image, type="filepath", sources=["upload", "clipboard"], height=260)
                preview = gr.Image(label=S.control_preview, type="pil", interactive=False, height=260, format="png")
            is_map = gr.Checkbox(False, label=S.control_is_map)
            low = high = estimator = None
            if kind == "canny":
                with gr.Row():
                    low = inputs.slider(S, 0, 255, value=100, step=1, label=S.canny_low)
                    high = inputs.slider(S, 0, 255, value=200, step=1, label=S.canny_high)
            else:
                estimators = studio.depth_estimators()
                estimator = inputs.dropdown(S, choices(estimators), value=estimators[0] if estimators else None, label=S.depth_estimator)
                if not estimators:
                    gr.Markdown(S.depth_estimator_missing)
            preview_button = gr.Button(S.control_preview_button)
            ordered = _models_for(names, kind)
            model = inputs.dropdown(S, choices(ordered), value=ordered[0] if ordered else None, label=S.controlnet_model)
            if not names:
                gr.Markdown(S.controlnet_missing)
            weight = inputs.slider(S, 0, 2, value=1.0, step=0.05, label=S.control_weight)
            with gr.Row():
                start = inputs.slider(S, 0, 1, value=0.0, step=0.05, label=S.control_start)
                end = inputs.slider(S, 0, 1, value=1.0, step=0.05, label=S.control_end)
            resize_mode = inputs.radio(S,
                [(S.resize_crop, "crop"), (S.resize_fit, "fit"), (S.resize_stretch, "stretch")],
                value="crop", label=S.resize_mode,
            )
            combine = gr.Checkbox(False, label=S.control_combine_depth if kind == "canny" else S.control_combine_canny)
            generate = gr.Button(S.generate_with_canny if kind == "canny" else S.generate_with_depth, variant="primary")
        units[kind] = Unit(kind, image, is_map, preview, preview_button, model, weight, start, end,
                           low, high, estimator, combine, resize_mode, generate)
    return units


def wire(ctx: UIContext, panel: Panel, units: dict[str, Unit], gallery, info) -> None:
    S, studio = ctx.S, ctx.studio
    canny, depth = units["canny"], units["depth"]

    # 1. Previews of the control maps (also API endpoints).
    def canny_preview(image: str, low_threshold: int = 100, high_threshold: int = 200):
        """The Canny edge map of an image at its own resolution."""
        try:
            return studio.preview_control({"kind": "canny", "image": image, "low_threshold": low_threshold, "high_threshold": high_threshold})
        except Exception as exc:
            raise user_error(S, exc) from None

    def depth_preview(image: str, estimator: str = "", progress=gr.Progress()):
        """The depth map of an image, from a local depth estimator."""
        try:
            return studio.preview_control({"kind": "depth", "image": image, "estimator": estimator})
        except Exception as exc:
            raise user_error(S, exc) from None

    canny.preview_button.click(canny_preview, [canny.image, canny.low, canny.high], canny.preview, api_name="canny_preview")
    for event in (canny.low.release, canny.high.release):
        event(canny_preview, [canny.image, canny.low, canny.high], canny.preview, api_visibility="private")
    canny.image.upload(canny_preview, [canny.image, canny.low, canny.high], canny.preview, api_visibility="private")
    depth.preview_button.click(depth_preview, [depth.image, depth.estimator], depth.preview, api_name="depth_preview",
                               concurrency_id=GPU, concurrency_limit=1)

    # 2. Generation: the tab's own unit, plus the other tab's when combined (multi-ControlNet).
    def canny_unit(image, is_map, model, weight, start, end, low, high):
        return {"kind": "canny", "image": image, "is_map": bool(is_map), "model": model, "weight": weight,
                "guidance_start": start, "guidance_end": end, "low_threshold": low, "high_threshold": high}

    def depth_unit(image, is_map, model, weight, start, end, estimator):
        return {"kind": "depth", "image": image, "is_map": bool(is_map), "model": model, "weight": weight,
                "guidance_start": start, "guidance_end": end, "estimator": estimator}

    def generate(units, request, progress, prompt, negative_prompt, num_inference_steps, guidance_scale, width,
                 height, seed, num_images_per_prompt, sampler, loras, hires_upscaler, hires_scale, deepcache, resize_mode):
        yield from panel.run_live(
            studio.control, request, progress, units=units, resize_mode=resize_mode,
            prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, width=width, height=height, seed=seed,
            num_images_per_prompt=num_images_per_prompt, sampler=sampler, loras=loras,
            hires_upscaler=hires_upscaler or None, hires_scale=hires_scale, deepcache=deepcache,
        )

    def canny_generate(
        image: str, prompt: str, negative_prompt: str = "", num_inference_steps: int = 20,
        guidance_scale: float = 7.0, width: int = 512, height: int = 512, seed: int = -1,
        num_images_per_prompt: int = 1, sampler: str = "DPM++ 2M Karras", loras: list | None = None,
        hires_upscaler: str = "", hires_scale: int = 2, deepcache: int = 0, image_is_control_map: bool = False,
        controlnet_model: str = "", controlnet_conditioning_scale: float = 1.0,
        control_guidance_start: float = 0.0, control_guidance_end: float = 1.0,
        low_threshold: int = 100, high_threshold: int = 200, resize_mode: str = "crop",
        add_depth: bool = False, depth_image: str | None = None, depth_image_is_control_map: bool = False,
        depth_controlnet_model: str = "", depth_conditioning_scale: float = 1.0,
        depth_guidance_start: float = 0.0, depth_guidance_end: float = 1.0, depth_estimator: str = "",
        request: gr.Request = None, progress=gr.Progress(),
    ):
        """ControlNet from Canny edges (optionally plus depth). Returns saved PNGs and a JSON info string."""
        units = [canny_unit(image, image_is_control_map, controlnet_model, controlnet_conditioning_scale,
                            control_guidance_start, control_guidance_end, low_threshold, high_threshold)]
        if add_depth:
            units.append(depth_unit(depth_image, depth_image_is_control_map, depth_controlnet_model,
                                    depth_conditioning_scale, depth_guidance_start, depth_guidance_end, depth_estimator))
        yield from generate(units, request, progress, prompt, negative_prompt, num_inference_steps, guidance_scale,
                        width, height, seed, num_images_per_prompt, sampler, loras, hires_upscaler, hires_scale,
                        deepcache, resize_mode)

    def depth_generate(
        image: str, prompt: str, negative_prompt: str = "", num_inference_steps: int = 20,
        guidance_scale: float = 7.0, width: int = 512, height: int = 512, seed: int = -1,
        num_images_per_prompt: int = 1, sampler: str = "DPM++ 2M Karras", loras: list | None = None,
        hires_upscaler: str = "", hires_scale: int = 2, deepcache: int = 0, image_is_control_map: bool = False,
        controlnet_model: str = "", controlnet_conditioning_scale: float = 1.0,
        control_guidance_start: float = 0.0, control_guidance_end: float = 1.0,
        depth_estimator: str = "", resize_mode: str = "crop",
        add_canny: bool = False, canny_image: str | None = None, canny_image_is_control_map: bool = False,
        canny_controlnet_model: str = "", canny_conditioning_scale: float = 1.0,
        canny_guidance_start: float = 0.0, canny_guidance_end: float = 1.0,
        low_threshold: int = 100, high_threshold: int = 200,
        request: gr.Request = None, progress=gr.Progress(),
    ):
        """ControlNet from a depth map (optionally plus Canny). Returns saved PNGs and a JSON info string."""
        units = [depth_unit(image, image_is_control_map, controlnet_model, controlnet_conditioning_scale,
                            control_guidance_start, control_guidance_end, depth_estimator)]
        if add_canny:
            units.append(canny_unit(canny_image, canny_image_is_control_map, canny_controlnet_model,
                                    canny_conditioning_scale, canny_guidance_start, canny_guidance_end,
                                    low_threshold, high_threshold))
        yield from generate(units, request, progress, prompt, negative_prompt, num_inference_steps, guidance_scale,
                        width, height, seed, num_images_per_prompt, sampler, loras, hires_upscaler, hires_scale,
                        deepcache, resize_mode)

    def unit_inputs(unit: Unit) -> list:
        return [unit.is_map, unit.model, unit.weight, unit.start, unit.end]

    canny_inputs = [canny.image, *panel.generation_inputs(), *unit_inputs(canny), canny.low, canny.high,
                    canny.resize_mode, canny.combine, depth.image, *unit_inputs(depth), depth.estimator]
    depth_inputs = [depth.image, *panel.generation_inputs(), *unit_inputs(depth), depth.estimator,
                    depth.resize_mode, depth.combine, canny.image, *unit_inputs(canny), canny.low, canny.high]
    canny.generate.click(canny_generate, canny_inputs, [gallery, info], api_name="canny", concurrency_id=GPU, concurrency_limit=1)
    depth.generate.click(depth_generate, depth_inputs, [gallery, info], api_name="depth", concurrency_id=GPU, concurrency_limit=1)
