"""ControlNet (Canny, depth, ...) on the store's shared base model.

A ControlNet job is a text-to-image job with extra guidance: ``run`` hands diffusers'
``StableDiffusionControlNetPipeline`` and the loaded ControlNet(s) to ``denoise.generate``, so
the pipeline comes from ``from_pipe`` and uses the base's own U-Net, VAE and text encoder (no
second copy). ControlNets are loaded once into the store's cache, from either

- a diffusers folder (``config.json`` + ``.bin``/``.safetensors``, as PAI publishes them), or
- a single ``.safetensors`` file in the original (LDM) key layout, as lllyasviel's
  ``control_v11p_sd15_canny.safetensors``: diffusers' ``from_single_file`` converts it, with a
  config derived from the base U-Net and written to a local folder, so nothing is downloaded.

Before anything is loaded, a ControlNet's shape (formats/controlnet.py) is compared with the base
U-Net: a mismatch is a clear ``ModelError``, never a tensor error in the middle of a job.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..errors import ModelError, ParamError
from ..formats.controlnet import (
    check_fits,
    controlnet_config_from_unet,
    ZIMAGE_CONTROLNET,
    header_shapes,
    is_controlnet_folder,
    shape_from_config,
    shape_from_file,
    zimage_controlnet_config,
)
from ..formats.images import fit_to, load_image, to_rgb
from ..requests import Control, ControlUnit
from . import annotators
from .denoise import Generated, StepHook, blank_canvas, check_cancel, generate, is_inpainting_model
from .hires import hires_of, upscale_results
from .registry import task

log = logging.getLogger(__name__)


def list_controlnets(store) -> list[str]:
    """Diffusers ControlNet folders and single ``.safetensors`` files under models/controlnet."""
    folders = [n for n in store.folders.list_diffusers_dirs("controlnet", "config.json")
               if is_controlnet_folder(store.folders.resolve("controlnet", n))]
    inside = tuple(f"{n}/" for n in folders)
    files = [n for n in store.folders.list_files("controlnet") if not n.startswith(inside)]
    return sorted(folders + files)


def _load_folder(store, path: Path):
    import diffusers

    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    name = config.get("_class_name")
    cls = getattr(diffusers, name if name in ("ControlNetUnionModel", ZIMAGE_CONTROLNET) else "ControlNetModel")
    return cls.from_pretrained(path, dtype=store.plan.dtype, local_files_only=True)


# The control type of each unit's kind for a union ControlNet (xinsir's ControlNet++ order:
# 0 openpose, 1 depth, 2 hed/scribble, 3 canny/lineart/mlsd, 4 normal, 5 segment, 6 tile, 7 repaint).
UNION_MODES = {"canny": 3, "depth": 1}


def is_union(net) -> bool:
    return type(net).__name__ == "ControlNetUnionModel"


def is_zimage(net) -> bool:
    """alibaba-pai's Z-Image ControlNet union: control layers beside the base transformer's
    blocks, the control type read from the map itself (Canny, depth, pose, HED, ...)."""
    return type(net).__name__ == ZIMAGE_CONTROLNET


def pipeline_class(store, guide: "Guidance | None", task: str):
    """The family's pipeline class for ``task`` ("controlnet", "controlnet_img2img",
    "controlnet_inpaint"), its union variant when the guidance is a union ControlNet."""
    if guide is not None and guide.union:
        task = task.replace("controlnet", "controlnet_union", 1)
    if (guide is not None and is_zimage(guide.controlnet) and task.endswith("inpaint")
            and guide.controlnet.config.control_in_dim == store.denoiser().config.in_channels):
        # Z-Image-Turbo-Fun-Controlnet-Union 1.0 reads the map only; 2.x also the mask and masked picture
        raise ModelError("controlnet_inpaint_version", family=store.family.label)
    return store.family.pipeline_class(task)


def image_argument(guide: "Guidance") -> str:
    """What text-to-image ControlNet pipelines call the control image (union ones and Z-Image's:
    control_image)."""
    return "control_image" if guide.union or is_zimage(guide.controlnet) else "image"


def _load_single_file(store, path: Path, shapes: dict[str, tuple[int, ...]]):
    import diffusers

    if store.family.denoiser == "transformer":  # Z-Image: its config from the base and the file
        cls, config = diffusers.ZImageControlNetModel, zimage_controlnet_config(store.denoiser().config, shapes)
    else:
        cls, config = diffusers.ControlNetModel, controlnet_config_from_unet(store.denoiser().config, shapes)
    with tempfile.TemporaryDirectory(prefix="danqing-cn-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config))
        return cls.from_single_file(str(path), config=folder, local_files_only=True, torch_dtype=store.plan.dtype)


def load_controlnet(store, name: str):
    """The ControlNet ``name`` (from list_controlnets), loaded once on the store's device and
    dtype. Checked against the base U-Net first, on every call (the base may have changed)."""
    path = store.folders.resolve("controlnet", name)
    base = shape_from_config(store.denoiser().config)
    # 1. Read the shape without loading weights, and refuse what does not fit.
    if path.is_dir():
        if not is_controlnet_folder(path):
            raise ModelError("not_a_controlnet", name=name)
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        check_fits(name, shape_from_config(config), base)
        load = partial(_load_folder, store, path)
    elif path.suffix.lower() == ".safetensors":
        try:
            shapes = header_shapes(path)
        except Exception as exc:  # a truncated or foreign file
            log.warning("cannot read the header of %s: %s", path, exc)
            raise ModelError("controlnet_load_failed", name=name) from exc
        net = shape_from_file(shapes)
        if net is None:
            raise ModelError("not_a_controlnet", name=name)
        check_fits(name, net, base)
        load = partial(_load_single_file, store, path, shapes)
    else:
        raise ModelError("not_a_controlnet", name=name)

    # 2. Load into the cache (once), on the base's device.
    def loader():
        try:
            model = load()
        except Exception as exc:
            log.exception("loading ControlNet %s failed", name)
            raise ModelError("controlnet_load_failed", name=name) from exc
        if any(p.is_meta for p in model.parameters()):
            raise ModelError("controlnet_load_failed", name=name)
        log.info("loaded ControlNet %s", name)
        return model.to(store.plan.device).eval()

    return store.cached("controlnet", name, loader)


# 3. Control maps --------------------------------------------------------------------------------
def control_map(store, unit: ControlUnit):
    """The control map of one unit: the image itself when it already is one, else Canny edges
    or a depth map computed from it. Decoded here, after the request was checked."""
    image = load_image(unit.image)
    if unit.is_map:
        return image
    if unit.kind == "canny":
        return annotators.canny_map(image, unit.low_threshold, unit.high_threshold)
    return annotators.depth_map(store, image, unit.estimator)


# 4. Generation --------------------------------------------------------------------------------
@dataclass
class Guidance:
    """The loaded ControlNet(s) of a job and their arguments, for any ControlNet pipeline:
    ``controlnet`` is the component, ``images`` the maps fitted to the output size (one image,
    or a list for several), ``maps`` the maps as computed (saved beside the results)."""

    controlnet: object
    images: object
    kwargs: dict
    maps: list
    union: bool = False  # one union ControlNet, a control type per image


def check_names(store, units) -> None:
    names = list_controlnets(store)
    for unit in units:
        if unit.model not in names:
            raise ParamError("unknown_model_name", kind="controlnet", name=str(unit.model)[:80])


def guidance(store, units, width: int, height: int, resize_mode: str, cancel=None,
             steps: int | None = None) -> Guidance:
    """Maps, ControlNets and their weights for ``units`` at width × height (names already
    checked). ``steps``: the length of the run they guide (a Z-Image ControlNet's window)."""
    from diffusers import MultiControlNetModel

    # 1. Each control map, one image at a time.
    maps = [control_map(store, unit) for unit in units]
    check_cancel(cancel)
    # 2. Load (or reuse) each ControlNet; a misfit is refused before the base is touched.
    nets = [load_controlnet(store, unit.model) for unit in units]
    # 3. Each control map at the output size.
    fitted = [fit_to(to_rgb(image), width, height, resize_mode) for image in maps]
    if any(is_zimage(net) for net in nets):
        return _zimage_guidance(store, units, nets, fitted, maps, steps)
    # 4. A union ControlNet: one model, every unit's map with its control type.
    if any(is_union(net) for net in nets):
        if len({unit.model for unit in units}) > 1:
            raise ParamError("controlnet_union_mix")
        kwargs = {
            "controlnet_conditioning_scale": [u.weight for u in units],
            "control_guidance_start": [u.guidance_start for u in units],
            "control_guidance_end": [u.guidance_end for u in units],
            "control_mode": [UNION_MODES[u.kind] for u in units],
        }
        return Guidance(nets[0], fitted, kwargs, maps, union=True)
    # 5. One ControlNet as itself, several through MultiControlNetModel (each its own weight).
    if len(nets) == 1:
        controlnet, images, scale = nets[0], fitted[0], units[0].weight
    else:
        controlnet, images, scale = MultiControlNetModel(nets), fitted, [u.weight for u in units]
    kwargs = {
        "controlnet_conditioning_scale": scale,
        "control_guidance_start": [u.guidance_start for u in units],
        "control_guidance_end": [u.guidance_end for u in units],
    }
    return Guidance(controlnet, images, kwargs, maps)


def _zimage_guidance(store, units, nets, fitted, maps, steps: int | None) -> Guidance:
    """Z-Image's ControlNet pipelines take one ControlNet: one unit, its weight (a second unit
    is refused in Chinese, never silently dropped), its start/end window kept by a step gate
    (``_step_gate``). The pipeline binds the net to the base transformer's embedders and
    refiners when it is built (``from_pipe`` → ``ZImageControlNetModel.from_transformer``), so
    every job binds it to the base of the moment; the store drops these nets when it switches
    away from the base."""
    if len(units) > 1:
        raise ParamError("controlnet_one_unit", family=store.family.label)
    unit = units[0]
    windowed = unit.guidance_start > 0 or unit.guidance_end < 1
    if windowed and not steps:  # a caller that cannot say the run's length
        raise ParamError("controlnet_no_window", family=store.family.label)
    _step_gate(nets[0], (unit.guidance_start, unit.guidance_end, steps) if windowed else None)
    return Guidance(nets[0], fitted[0], {"controlnet_conditioning_scale": unit.weight}, maps)


def _step_gate(net, window: tuple[float, float, int] | None) -> None:
    """Keep a Z-Image ControlNet to the steps of its window (A1111's 引导开始/结束, by diffusers'
    rule for the other ControlNet pipelines: step k of n counts when k/n >= start and
    (k+1)/n <= end), which diffusers' Z-Image ControlNet pipelines lack: the net's forward is
    wrapped once, and each job sets its window (None: every step). Outside the window the net
    does not run and adds nothing. The pipeline calls it once a step (both CFG halves in one
    call) with the progress (1000 - t) / 1000, which grows through a run: a smaller one starts
    the next run (the next picture of a batch)."""
    state = net.__dict__.get("_danqing_gate")
    if state is None:
        state = {"window": None, "calls": 0, "last": None}
        plain = net.forward

        def gated(x, t, *args, **kwargs):
            window = state["window"]
            if window is None:
                return plain(x, t, *args, **kwargs)
            now = float(t.flatten()[0])
            if state["last"] is not None and now < state["last"]:
                state["calls"] = 0
            state["last"], k = now, state["calls"]
            state["calls"] += 1
            start, end, steps = window
            if k / steps < start or (k + 1) / steps > end:
                return {}
            return plain(x, t, *args, **kwargs)

        net.forward = gated
        net.__dict__["_danqing_gate"] = state
    state.update(window=window, calls=0, last=None)


def refit(guide: Guidance, width: int, height: int, resize_mode: str):
    """A guidance's maps fitted to another size (the hires pass's), in the same shape as ``images``."""
    fitted = [fit_to(to_rgb(image), width, height, resize_mode) for image in guide.maps]
    return fitted[0] if len(fitted) == 1 and not guide.union else fitted


@task("controlnet")
def run(
    store,
    request: Control,
    cancel: threading.Event | None = None,
    on_step: StepHook | None = None,
    on_preview=None,
) -> Generated:
    """Text-to-image guided by one to three ControlNets, on the shared base modules."""

    base, units = request.base, request.units
    # 1. Names and the post-step first: nothing is decoded or loaded for a request that fails.
    check_names(store, units)
    hires = hires_of(store, base)
    # 2. Maps and ControlNets at the output size.
    guide = guidance(store, units, base.width, base.height, request.resize_mode, cancel, base.num_inference_steps)
    # 3. The shared denoise-and-decode loop, with the ControlNet pipeline class (an inpainting
    #    model paints a blank, fully masked canvas); the post-step.
    cls, call_kwargs = pipeline_class(store, guide, "controlnet"), {image_argument(guide): guide.images, **guide.kwargs}
    if is_inpainting_model(store):
        cls, call_kwargs = pipeline_class(store, guide, "controlnet_inpaint"), {
            **blank_canvas(base), "control_image": guide.images, **guide.kwargs}
    result = generate(
        store,
        base,
        cls=cls,
        components={"controlnet": guide.controlnet},
        call_kwargs=call_kwargs,
        cancel=cancel,
        on_step=on_step,
        on_preview=on_preview,
    )
    result.notices["controlnets"] = [unit.model for unit in units]
    result.maps = guide.maps
    return upscale_results(store, result, hires, cancel)
