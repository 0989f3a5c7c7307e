"""ControlNet (Canny, depth, ...) on the store's shared base model.

A ControlNet job is a text-to-image job with extra guidance: ``run`` hands diffusers'
``StableDiffusionControlNetPipeline`` and the loaded ControlNet(s) to ``txt2img.generate``, so
the pipeline comes from ``from_pipe`` and uses the base's own U-Net, VAE and text encoder (no
second copy). ControlNets are loaded once into the store's cache, from either

- a diffusers folder (``config.json`` + ``.bin``/``.safetensors``, as PAI publishes them), or
- a single ``.safetensors`` file in the original (LDM) key layout, as lllyasviel's
  ``control_v11p_sd15_canny.safetensors``: diffusers' ``from_single_file`` converts it, with a
  config derived from the base U-Net and written to a local folder, so nothing is downloaded.

Before anything is loaded, a ControlNet's shape (cross-attention width, block channels, SDXL
embeddings) is read from its config or its safetensors header and compared with the base U-Net:
a mismatch is a clear ``ModelError``, never a tensor error in the middle of a job.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import tempfile
import threading
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from PIL import Image

from . import txt2img
from .common import StepHook, check_cancel
from .errors import ModelError, ParamError
from .params import Txt2ImgParams, _as_float, _in_range
from .preprocess import RESIZE_MODES, fit_to, to_rgb

log = logging.getLogger(__name__)

MAX_UNITS = 3
MAX_WEIGHT = 2.0
# Prefix of the ControlNet weights in checkpoints that bundle them with a full SD model.
LDM_PREFIX = "control_model."
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)

# Names the demo bundle writes into models/controlnet.
DEMO_CANNY = "demo-canny"
DEMO_DEPTH = "demo-depth.safetensors"
DEMO_WRONG = "demo-wrong-xattn.safetensors"
DEMO_DEPTH_ESTIMATOR = "demo-dpt"
# The demo's hint encoder is narrower than the real (16, 32, 96, 256); the loader reads it from
# the file, so the demo also exercises that path.
DEMO_HINT_CHANNELS = (8, 16, 16, 32)


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet and its control map (already preprocessed: edges, depth, ...)."""

    model: str  # a name from list_controlnets
    image: Image.Image
    weight: float = 1.0  # diffusers' controlnet_conditioning_scale
    guidance_start: float = 0.0  # fraction of the steps where the guidance starts
    guidance_end: float = 1.0


@dataclass(frozen=True)
class ControlParams:
    base: Txt2ImgParams
    units: tuple[ControlUnit, ...]
    resize_mode: str = "crop"  # how maps are fitted to the output size: crop | fit | stretch


# 1. Validation ------------------------------------------------------------------------------
def validate_units(units, resize_mode: str = "crop") -> tuple[ControlUnit, ...]:
    """Server-side checks of the ControlNet units; returns them with plain float fields."""
    if resize_mode not in RESIZE_MODES:
        raise ParamError("unknown_resize_mode", value=str(resize_mode)[:40])
    units = tuple(units or ())
    if not units:
        raise ParamError("controlnet_no_units")
    if len(units) > MAX_UNITS:
        raise ParamError("controlnet_too_many_units", count=len(units), limit=MAX_UNITS)
    checked = []
    for unit in units:
        if not isinstance(unit, ControlUnit) or not isinstance(unit.model, str) or not unit.model:
            raise ParamError("controlnet_no_model")
        if not isinstance(unit.image, Image.Image):
            raise ParamError("controlnet_no_image", model=unit.model[:80])
        weight = _as_float("controlnet_weight", unit.weight)
        _in_range("controlnet_weight", weight, 0.0, MAX_WEIGHT)
        start = _as_float("guidance_start", unit.guidance_start)
        end = _as_float("guidance_end", unit.guidance_end)
        _in_range("guidance_start", start, 0.0, 1.0)
        _in_range("guidance_end", end, 0.0, 1.0)
        if start >= end:
            raise ParamError("controlnet_guidance_order", start=start, end=end)
        checked.append(replace(unit, weight=weight, guidance_start=start, guidance_end=end))
    return tuple(checked)


def validate_control(base: Txt2ImgParams, units, resize_mode: str = "crop") -> ControlParams:
    """A checked ControlNet request: ``base`` comes from params.validate_txt2img."""
    return ControlParams(base=base, units=validate_units(units, resize_mode), resize_mode=resize_mode)


# 2. What is on disk -------------------------------------------------------------------------
def _is_controlnet_folder(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    is_controlnet = isinstance(config, dict) and config.get("_class_name") == "ControlNetModel"
    return is_controlnet and any((folder / name).is_file() for name in WEIGHT_FILES)


def list_controlnets(store) -> list[str]:
    """Diffusers ControlNet folders and single ``.safetensors`` files under models/controlnet."""
    root = store.folders.folder("controlnet")
    folders = [n for n in store.folders.list_diffusers_dirs("controlnet", "config.json") if _is_controlnet_folder(root / n)]
    inside = tuple(f"{n}/" for n in folders)
    files = [n for n in store.folders.list_files("controlnet") if not n.startswith(inside)]
    return sorted(folders + files)


# 3. Does it fit the base? ----------------------------------------------------------------------
@dataclass(frozen=True)
class NetShape:
    """What must agree between a ControlNet and the U-Net it guides."""

    cross_attention_dim: int | None
    in_channels: int | None
    down_channels: tuple[int, ...]  # channels of each residual added to the U-Net's down path
    sdxl: bool


def _down_channels(config) -> tuple[int, ...]:
    """One residual after conv_in, one per layer, one per downsampler (diffusers' layout)."""
    blocks = list(config["block_out_channels"])
    layers = config["layers_per_block"]
    per_level = layers if isinstance(layers, (list, tuple)) else [layers] * len(blocks)
    channels = [blocks[0]]
    for level, width in enumerate(blocks):
        channels += [width] * per_level[level]
        if level < len(blocks) - 1:
            channels.append(width)
    return tuple(channels)


def shape_from_config(config) -> NetShape:
    """The shape of a diffusers U-Net or ControlNet config."""
    return NetShape(
        cross_attention_dim=config.get("cross_attention_dim"),
        in_channels=config.get("in_channels"),
        down_channels=_down_channels(config),
        sdxl=config.get("addition_embed_type") is not None,
    )


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (no tensor data is read), prefix removed."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    if any(key.startswith(LDM_PREFIX) for key in shapes):
        shapes = {key[len(LDM_PREFIX):]: s for key, s in shapes.items() if key.startswith(LDM_PREFIX)}
    return shapes


def shape_from_file(shapes: dict[str, tuple[int, ...]]) -> NetShape | None:
    """The shape of a single-file ControlNet (LDM or diffusers key layout); None if it is none."""
    diffusers_layout = "time_embedding.linear_1.weight" in shapes
    conv_in, residual = (
        ("conv_in.weight", r"controlnet_down_blocks\.(\d+)\.weight")
        if diffusers_layout
        else ("input_blocks.0.0.weight", r"zero_convs\.(\d+)\.0\.weight")
    )
    residuals = {int(m.group(1)): s[0] for k, s in shapes.items() if (m := re.fullmatch(residual, k))}
    if not residuals or conv_in not in shapes:
        return None
    cross = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2), None)
    return NetShape(
        cross_attention_dim=cross,
        in_channels=shapes[conv_in][1],
        down_channels=tuple(residuals[i] for i in sorted(residuals)),
        sdxl=any(k.startswith(("label_emb.", "add_embedding.")) for k in shapes),
    )


def check_fits(name: str, net: NetShape, base: NetShape) -> None:
    """Refuse a ControlNet whose residuals cannot be added to the base U-Net's."""
    if net.sdxl and not base.sdxl:
        raise ModelError("controlnet_sdxl", name=name)
    for what, got, expected in (
        ("cross_attention_dim", net.cross_attention_dim, base.cross_attention_dim),
        ("in_channels", net.in_channels, base.in_channels),
        ("block_out_channels", net.down_channels, base.down_channels),
    ):
        if got is not None and got != expected:
            raise ModelError("controlnet_mismatch", name=name, what=what, expected=str(expected), got=str(got))


# 4. Loading -----------------------------------------------------------------------------------
def _controlnet_config_from_unet(unet_config, shapes: dict[str, tuple[int, ...]]) -> dict:
    """A ControlNetModel config for a single file: the base U-Net's architecture (what
    ``ControlNetModel.from_unet`` copies) plus what the file itself says about its hint encoder
    and projections."""
    from diffusers import ControlNetModel

    accepted = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(unet_config).items() if k in accepted}
    if "input_hint_block.0.weight" in shapes:  # LDM: 8 convs, channels change at 0, 4, 8, 12
        config["conditioning_channels"] = shapes["input_hint_block.0.weight"][1]
        config["conditioning_embedding_out_channels"] = [shapes[f"input_hint_block.{i}.weight"][0] for i in (0, 4, 8, 12)]
    elif "controlnet_cond_embedding.conv_in.weight" in shapes:
        config["conditioning_channels"] = shapes["controlnet_cond_embedding.conv_in.weight"][1]
    proj_in = next((s for k, s in shapes.items() if k.endswith("proj_in.weight")), None)
    if proj_in is not None:
        config["use_linear_projection"] = len(proj_in) == 2
    return {"_class_name": "ControlNetModel", **config}


def _load_folder(store, path: Path):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(path, dtype=store.plan.dtype, local_files_only=True)


def _load_single_file(store, path: Path, shapes: dict[str, tuple[int, ...]]):
    from diffusers import ControlNetModel

    config = _controlnet_config_from_unet(store.base().unet.config, shapes)
    with tempfile.TemporaryDirectory(prefix="danqing-cn-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config))
        return ControlNetModel.from_single_file(
            str(path), config=folder, local_files_only=True, torch_dtype=store.plan.dtype
        )


def load_controlnet(store, name: str):
    """The ControlNet ``name`` (from list_controlnets), loaded once on the store's device and
    dtype. Checked against the base U-Net first, on every call (the base may have changed)."""
    path = store.folders.resolve("controlnet", name)
    base = shape_from_config(store.base().unet.config)
    # 1. Read the shape without loading weights, and refuse what does not fit.
    if path.is_dir():
        if not _is_controlnet_folder(path):
            raise ModelError("not_a_controlnet", name=name)
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        check_fits(name, shape_from_config(config), base)
        load = partial(_load_folder, store, path)
    elif path.suffix.lower() == ".safetensors":
        try:
            shapes = _header_shapes(path)
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

    with store.lock:
        return store.cache.get("controlnet", name, loader)


# 5. Generation --------------------------------------------------------------------------------
def run(
    store,
    params: ControlParams,
    cancel: threading.Event | None = None,
    on_step: StepHook | None = None,
    on_preview=None,
) -> txt2img.Generated:
    """Text-to-image guided by one to three ControlNets, on the shared base modules."""
    from diffusers import MultiControlNetModel, StableDiffusionControlNetPipeline

    units = validate_units(params.units, params.resize_mode)
    base = params.base
    with store.lock:
        check_cancel(cancel)
        # 1. Load (or reuse) each ControlNet; a misfit is refused before the base is touched.
        nets = [load_controlnet(store, unit.model) for unit in units]
        # 2. Each control map at the output size.
        maps = [fit_to(to_rgb(unit.image), base.width, base.height, params.resize_mode) for unit in units]
        # 3. One ControlNet as itself, several through MultiControlNetModel (each its own weight).
        if len(nets) == 1:
            controlnet, image, scale = nets[0], maps[0], units[0].weight
        else:
            controlnet, image, scale = MultiControlNetModel(nets), maps, [u.weight for u in units]
        call_kwargs = {
            "image": image,
            "controlnet_conditioning_scale": scale,
            "control_guidance_start": [u.guidance_start for u in units],
            "control_guidance_end": [u.guidance_end for u in units],
        }
        # 4. The shared denoise-and-decode loop, with the ControlNet pipeline class.
        result = txt2img.generate(
            store,
            base,
            cls=StableDiffusionControlNetPipeline,
            components={"controlnet": controlnet},
            call_kwargs=call_kwargs,
            cancel=cancel,
            on_step=on_step,
            on_preview=on_preview,
        )
    result.notices["controlnets"] = [unit.model for unit in units]
    return result


# 6. Demo models ---------------------------------------------------------------------------------
_RESNET_TO_LDM = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_DIRECT_TO_LDM = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
    "controlnet_cond_embedding.conv_out": "input_hint_block.14",
    "controlnet_mid_block": "middle_block_out.0",
}


def _resnet_suffix(rest: str) -> str:
    for new, old in _RESNET_TO_LDM:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def ldm_state_dict(state: dict, layers_per_block: int) -> dict:
    """A diffusers ControlNet state dict in the original (LDM) key layout: the inverse of
    diffusers' ``convert_controlnet_checkpoint``, so the demo ships a real single-file ControlNet."""
    out = {}
    step = layers_per_block + 1  # input blocks per level: its layers, then a downsampler
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if module in _DIRECT_TO_LDM:
            out[f"{_DIRECT_TO_LDM[module]}.{param}"] = tensor
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            block = 1 + int(m[1]) * step + int(m[2])
            out[f"input_blocks.{block}.0.{_resnet_suffix(m[3])}"] = tensor
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            out[f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.1.{m[3]}"] = tensor
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            out[f"input_blocks.{1 + int(m[1]) * step + layers_per_block}.0.op.{m[2]}"] = tensor
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
            out[f"zero_convs.{m[1]}.0.{m[2]}"] = tensor
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            out[f"middle_block.{2 * int(m[1])}.{_resnet_suffix(m[2])}"] = tensor
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            out[f"middle_block.1.{m[1]}"] = tensor
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key):
            out[f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"] = tensor
        else:
            raise ValueError(f"no LDM name for {key}")
    return out


def _demo_controlnet(unet, seed: int, **overrides):
    """A tiny ControlNet initialised from ``unet`` like a real one, with random (not zero)
    output convolutions so that it visibly steers the demo images."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    if overrides:
        config = _controlnet_config_from_unet(unet.config, {})
        config.pop("_class_name")
        config.update(overrides, conditioning_embedding_out_channels=DEMO_HINT_CHANNELS)
        net = ControlNetModel(**config)
    else:
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=DEMO_HINT_CHANNELS)
    zero_init = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_init:
            conv.weight.normal_(0.0, 0.05)
            conv.bias.normal_(0.0, 0.05)
    return net.eval()


def _save_single_file(net, path: Path) -> None:
    """Write ``net`` as an LDM-layout safetensors file and check diffusers reads it back."""
    import torch
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(ldm_state_dict(state, net.config.layers_per_block), str(path))
    with tempfile.TemporaryDirectory(prefix="danqing-cn-") as folder:
        net.save_config(folder)
        back = ControlNetModel.from_single_file(str(path), config=folder, local_files_only=True)
    loaded = back.state_dict()
    if loaded.keys() != state.keys() or not all(torch.equal(loaded[k], state[k]) for k in state):
        raise RuntimeError(f"{path.name} does not convert back to the same ControlNet")


def _save_demo_depth_estimator(folder: Path, seed: int) -> None:
    """A tiny DPT depth model with an image processor config like Intel/dpt-hybrid-midas's."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(seed)
    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=64,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        is_hybrid=False,
    )
    model = DPTForDepthEstimation(config).eval()
    model.save_pretrained(folder)
    processor = {
        "image_processor_type": "DPTImageProcessor",
        "do_resize": True,
        "size": {"height": 64, "width": 64},
        "keep_aspect_ratio": False,
        "ensure_multiple_of": 1,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


def save_demo_controlnets(root: Path) -> None:
    """Write the demo ControlNets and depth estimator into the bundle at ``root``, shaped to fit
    the demo base model (checkpoints/DEMO_MODEL)."""
    from diffusers import UNet2DConditionModel

    from .demo import DEMO_MODEL
    from .folders import ModelFolders

    folders = ModelFolders(root)
    folders.ensure()
    target = folders.folder("controlnet")
    unet = UNet2DConditionModel.from_pretrained(folders.folder("checkpoints") / DEMO_MODEL / "unet", use_safetensors=False)
    # 1. Canny: a diffusers folder with .bin weights, like PAI's published ControlNets.
    _demo_controlnet(unet, seed=10).save_pretrained(target / DEMO_CANNY, safe_serialization=False)
    # 2. Depth: one .safetensors file in lllyasviel's original key layout.
    _save_single_file(_demo_controlnet(unet, seed=11), target / DEMO_DEPTH)
    # 3. A ControlNet for another text encoder width: the mismatch every check must catch.
    wrong_width = unet.config.cross_attention_dim + 16
    _save_single_file(_demo_controlnet(unet, seed=12, cross_attention_dim=wrong_width), target / DEMO_WRONG)
    # 4. A depth estimator for the depth preprocessor.
    _save_demo_depth_estimator(folders.folder("annotators") / DEMO_DEPTH_ESTIMATOR, seed=13)
