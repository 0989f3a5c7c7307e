"""ControlNet files: what is a ControlNet folder, and the network's shape read from its config or
its safetensors header without loading any weight, so a ControlNet that does not fit the base
U-Net is refused before anything is loaded."""

from __future__ import annotations

import inspect
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

log = logging.getLogger(__name__)


# Prefix of the ControlNet weights in checkpoints that bundle them with a full SD model.
LDM_PREFIX = "control_model."


# alibaba-pai's Z-Image ControlNet union (diffusers' ZImageControlNetModel): its class name, and
# the tensor that names it in a single file (its patch embedder: width × 4·in-channels).
ZIMAGE_CONTROLNET = "ZImageControlNetModel"
ZIMAGE_CONTROLNET_KEY = "control_all_x_embedder.2-1.weight"


WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)


# 2. What is on disk -------------------------------------------------------------------------
def is_controlnet_folder(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    is_controlnet = isinstance(config, dict) and config.get("_class_name") in (
        "ControlNetModel", "ControlNetUnionModel", ZIMAGE_CONTROLNET)
    return is_controlnet and any((folder / name).is_file() for name in WEIGHT_FILES)


# 3. Does it fit the base? ----------------------------------------------------------------------
@dataclass(frozen=True)
class NetShape:
    """What must agree between a ControlNet and the denoiser it guides."""

    cross_attention_dim: int | None
    in_channels: int | None
    down_channels: tuple[int, ...]  # channels of each residual added to the U-Net's down path
    sdxl: bool
    transformer_dim: int | None = None  # Z-Image: the transformer width its control layers add to

    @property
    def family(self):
        from .families import SD1, SDXL, ZIMAGE

        return ZIMAGE if self.transformer_dim else (SDXL if self.sdxl else SD1)


def shape_from_transformer_config(config) -> NetShape:
    """A Z-Image transformer's (or Z-Image ControlNet's) width: what its control layers must match."""
    return NetShape(None, None, (), False, transformer_dim=config.get("dim"))


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
    """The shape of a diffusers U-Net or ControlNet config (or a Z-Image transformer's)."""
    if "block_out_channels" not in config and "dim" in config:
        return shape_from_transformer_config(config)
    return NetShape(
        cross_attention_dim=config.get("cross_attention_dim"),
        in_channels=config.get("in_channels"),
        down_channels=_down_channels(config),
        sdxl=config.get("addition_embed_type") is not None,
    )


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (no tensor data is read), prefix removed."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    if any(key.startswith(LDM_PREFIX) for key in shapes):
        shapes = {key[len(LDM_PREFIX):]: s for key, s in shapes.items() if key.startswith(LDM_PREFIX)}
    return shapes


def shape_from_file(shapes: dict[str, tuple[int, ...]]) -> NetShape | None:
    """The shape of a single-file ControlNet (LDM or diffusers key layout, or alibaba-pai's
    Z-Image ControlNet union); None if it is none."""
    if ZIMAGE_CONTROLNET_KEY in shapes:
        return NetShape(None, None, (), False, transformer_dim=shapes[ZIMAGE_CONTROLNET_KEY][0])
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
    if net.family is not base.family:  # an SDXL ControlNet on SD 1.5, a Z-Image one on SDXL, ...
        raise ModelError("controlnet_family", name=name, net=net.family.label, base=base.family.label)
    if net.transformer_dim is not None:
        if net.transformer_dim != base.transformer_dim:
            raise ModelError("controlnet_mismatch", name=name, what="dim", expected=str(base.transformer_dim),
                             got=str(net.transformer_dim))
        return
    for what, got, expected in (
        ("cross_attention_dim", net.cross_attention_dim, base.cross_attention_dim),
        ("in_channels", net.in_channels, base.in_channels),
        ("block_out_channels", net.down_channels, base.down_channels),
    ):
        if got is not None and got != expected:
            raise ModelError("controlnet_mismatch", name=name, what=what, expected=str(expected), got=str(got))


# 4. Loading -----------------------------------------------------------------------------------
def controlnet_config_from_unet(unet_config, shapes: dict[str, tuple[int, ...]]) -> dict:
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


def zimage_controlnet_config(transformer_config, shapes: dict[str, tuple[int, ...]]) -> dict:
    """A ZImageControlNetModel config for alibaba-pai's single file, from the base transformer
    (width, heads, refiner depth) and the file's tensors: its control layers spread evenly over
    the transformer's blocks (1.0: 6 of 30 at 0, 5, …, 25; 2.x: 15 at 0, 2, …, 28), its control
    channels (16 latent channels, 33 with 2.x's mask and masked image), whether it carries its
    own projected noise refiner (2.x)."""
    layers = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("control_layers.")})
    refiners = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("control_noise_refiner.")})
    blocks = int(transformer_config["n_layers"])
    step = max(1, blocks // max(1, len(layers)))
    patch = shapes[ZIMAGE_CONTROLNET_KEY][1]  # in-channels × 2 × 2 × 1
    config = {
        "_class_name": ZIMAGE_CONTROLNET,
        "control_layers_places": [i * step for i in range(len(layers))],
        "control_refiner_layers_places": list(range(len(refiners))) if refiners else [0, 1][:int(transformer_config["n_refiner_layers"])],
        "control_in_dim": patch // 4,
        # 2.x's control refiner blocks carry their own projections into the control stream
        "add_control_noise_refiner": ("control_noise_refiner" if any(
            k.startswith("control_noise_refiner.") and ".after_proj." in k for k in shapes) else None),
    }
    for key in ("dim", "n_refiner_layers", "n_heads", "n_kv_heads", "norm_eps", "qk_norm", "all_patch_size",
                "all_f_patch_size"):
        if key in transformer_config:
            config[key] = transformer_config[key]
    return config
