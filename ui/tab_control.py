"""The ControlNet modes of the 创作 tab: 线稿控制 (Canny) and 深度控制 (depth).

Each tab has its control image, a preview of the control map (or a ready-made map), the
ControlNet model and its weight and guidance window; either tab can also add the other tab's
unit (multi-ControlNet). The prompt and sampling parameters come from the shared panel.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.requests import CONTROL_KINDS, Control, ControlUnit, Txt2Img

from . import endpoints, inputs
from .binding import endpoint, request_fields
from .common import GPU, GPU_LIMIT, UIContext, caller_of, choices, user_error
from .panel import API_DEFAULTS, Panel


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
                # Canny previews on upload (its refusal speaks); depth previews on demand.
                image = inputs.image(S, label=S.control_image, type="filepath", sources=["upload", "clipboard"], height=260,
                                     report=kind == "depth")
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
            generate = gr.Button(S.generate_with_canny if kind == "canny" else S.generate_with_depth, variant="primary",
                                 elem_id=f"generate-{kind}", elem_classes=["generate-button"])
        units[kind] = Unit(kind, image, is_map, preview, preview_button, model, weight, start, end,
                           low, high, estimator, combine, resize_mode, generate)
    return units


# The API names of one unit's settings, in ControlUnit field order (UNIT_FIELDS): the tab's own
# unit, and the other tab's unit when it is added (multi-ControlNet). The annotator settings
# (Canny thresholds, depth estimator) are one set of components shared by both tabs.
UNIT_FIELDS = ("is_map", "model", "weight", "guidance_start", "guidance_end")
OWN_NAMES = ("image_is_control_map", "controlnet_model", "controlnet_conditioning_scale",
             "control_guidance_start", "control_guidance_end")
UNIT_DEFAULTS = (False, "", 1.0, 0.0, 1.0)


def added_names(kind: str) -> tuple[str, ...]:
    return (f"{kind}_image_is_control_map", f"{kind}_controlnet_model", f"{kind}_conditioning_scale",
            f"{kind}_guidance_start", f"{kind}_guidance_end")


# The two endpoints' parameters: their published order (ui/endpoints.py), then any added since.
HIRES_PASS_FIELDS = ("hires_pass", "hires_strength", "hires_steps")
ENDPOINTS = {kind: endpoints.names(kind) for kind in ("canny", "depth")}
TXT2IMG_FIELDS = request_fields(Txt2Img)
DEFAULTS = {**API_DEFAULTS, "low_threshold": 100, "high_threshold": 200, "depth_estimator": "", "resize_mode": "crop",
            "add_depth": False, "add_canny": False, "depth_image": None, "canny_image": None,
            **dict(zip(OWN_NAMES, UNIT_DEFAULTS)), **dict(zip(added_names("canny"), UNIT_DEFAULTS)),
            **dict(zip(added_names("depth"), UNIT_DEFAULTS))}
DOCS = {
    "canny": "ControlNet from Canny edges (optionally plus depth). Returns saved PNGs and a JSON info string.",
    "depth": "ControlNet from a depth map (optionally plus Canny). Returns saved PNGs and a JSON info string.",
}


def _unit(values: dict, kind: str, image: str, names: tuple[str, ...]) -> dict:
    """One unit's ControlUnit fields from an endpoint's values (its image and settings by name)."""
    fields = {"kind": kind, "image": values[image], **{f: values[n] for f, n in zip(UNIT_FIELDS, names)}}
    if kind == "canny":
        return {**fields, "low_threshold": values["low_threshold"], "high_threshold": values["high_threshold"]}
    return {**fields, "estimator": values["depth_estimator"]}


def units_of(kind: str, values: dict) -> list[dict]:
    """The ControlUnit fields of an endpoint's values: the tab's own unit, then the other's."""
    other = "depth" if kind == "canny" else "canny"
    units = [_unit(values, kind, "image", OWN_NAMES)]
    if values[f"add_{other}"]:
        units.append(_unit(values, other, f"{other}_image", added_names(other)))
    return units


# What an edit endpoint (图生图) reads of the two ControlNet tabs, when it adds their units.
ADDED_FIELDS = ("add_canny", "canny_image", *added_names("canny"), "low_threshold", "high_threshold",
                "add_depth", "depth_image", *added_names("depth"), "depth_estimator")


def added_units(values: dict) -> list[dict]:
    """The ControlNet tabs' units an edit adds (``add_canny`` / ``add_depth``)."""
    return [_unit(values, kind, f"{kind}_image", added_names(kind)) for kind in CONTROL_KINDS if values[f"add_{kind}"]]


def _settings(unit: Unit) -> list:
    """A unit's setting components, in UNIT_FIELDS order."""
    return [unit.is_map, unit.model, unit.weight, unit.start, unit.end]


def added_components(units: dict[str, Unit], add: dict) -> dict:
    """The components of ADDED_FIELDS: ``add`` holds the edit tab's own add_canny/add_depth boxes."""
    canny, depth = units["canny"], units["depth"]

    return {**add, "canny_image": canny.image, **dict(zip(added_names("canny"), _settings(canny))),
            "depth_image": depth.image, **dict(zip(added_names("depth"), _settings(depth))),
            "low_threshold": canny.low, "high_threshold": canny.high, "depth_estimator": depth.estimator}


def wire(ctx: UIContext, panel: Panel, units: dict[str, Unit], gallery, info, progress_on) -> None:
    S, studio = ctx.S, ctx.studio
    canny, depth = units["canny"], units["depth"]

    # 1. Previews of the control maps (also API endpoints).
    def canny_preview(image: str, low_threshold: int = 100, high_threshold: int = 200):
        """The Canny edge map of an image at its own resolution."""
        try:
            unit = ControlUnit.from_fields(kind="canny", image=image, low_threshold=low_threshold,
                                           high_threshold=high_threshold)
            return studio.preview_control(unit)
        except Exception as exc:
            raise user_error(S, exc) from None

    def depth_preview(image: str, estimator: str = "", request: gr.Request = None, progress=gr.Progress()):
        """The depth map of an image, from a local depth estimator."""
        try:
            unit = ControlUnit.from_fields(kind="depth", image=image, estimator=estimator)
            return studio.preview_control(unit, client=caller_of(request))
        except Exception as exc:
            raise user_error(S, exc) from None

    canny.preview_button.click(canny_preview, [canny.image, canny.low, canny.high], canny.preview, api_name="canny_preview")
    for event in (canny.low.release, canny.high.release):
        event(canny_preview, [canny.image, canny.low, canny.high], canny.preview, api_visibility="private")
    canny.image.upload(canny_preview, [canny.image, canny.low, canny.high], canny.preview, api_visibility="private")
    depth.preview_button.click(depth_preview, [depth.image, depth.estimator], depth.preview, api_name="depth_preview",
                               concurrency_id=GPU, concurrency_limit=GPU_LIMIT)

    # 2. Generation: the tab's own unit, plus the other tab's when combined (multi-ControlNet).
    def components(own: Unit, other: Unit) -> dict:
        """Every component an endpoint reads, by its API parameter name."""
        return {
            **panel.fields(), "image": own.image, **dict(zip(OWN_NAMES, _settings(own))), "resize_mode": own.resize_mode,
            f"add_{other.kind}": own.combine, f"{other.kind}_image": other.image,
            **dict(zip(added_names(other.kind), _settings(other))),
            "low_threshold": canny.low, "high_threshold": canny.high, "depth_estimator": depth.estimator,
        }

    for own, other in ((canny, depth), (depth, canny)):
        kind = own.kind

        def generate(values: dict, request: gr.Request = None, progress=None, kind=kind):
            def job(**kw):
                base = Txt2Img.from_fields({k: values[k] for k in TXT2IMG_FIELDS if k in values})
                return studio.control(Control.build(base, units_of(kind, values), values["resize_mode"]), **kw)

            yield from panel.run_live(job, request, progress)

        generate.__name__ = f"{kind}_generate"
        event, inputs = endpoint(ENDPOINTS[kind], components(own, other), generate, doc=DOCS[kind], defaults=DEFAULTS)
        own.generate.click(event, inputs, [gallery, info], api_name=kind, concurrency_id=GPU, concurrency_limit=GPU_LIMIT,
                           show_progress_on=progress_on)
