"""Demo ControlNets: a diffusers folder (.bin, like PAI's), a single file in lllyasviel's
original (LDM) key layout, one that does not fit the demo base, and a tiny depth estimator."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from ..formats.controlnet import controlnet_config_from_unet
from ..store.folders import ModelFolders
from .sd import DEMO_MODEL


# Names the demo bundle writes into models/controlnet.
DEMO_CANNY = "demo-canny"


DEMO_DEPTH = "demo-depth.safetensors"


DEMO_WRONG = "demo-wrong-xattn.safetensors"


DEMO_DEPTH_ESTIMATOR = "demo-dpt"


# The demo's hint encoder is narrower than the real (16, 32, 96, 256); the loader reads it from
# the file, so the demo also exercises that path.
DEMO_HINT_CHANNELS = (8, 16, 16, 32)


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
        config = controlnet_config_from_unet(unet.config, {})
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


# SDXL ---------------------------------------------------------------------------------------------
DEMO_XL_CANNY = "demo-xl-canny"
DEMO_XL_UNION = "demo-xl-union"


def save_demo_sdxl_controlnets(root: Path) -> None:
    """For the tiny SDXL (checkpoints/danqing-demo-xl): a Canny ControlNet and a union one
    (xinsir's ControlNet++ layout: one model, a control type per image), as diffusers folders
    with safetensors, the way xinsir and diffusers publish SDXL ControlNets."""
    import torch
    from diffusers import ControlNetUnionModel, UNet2DConditionModel

    from .sdxl import DEMO_SDXL

    folders = ModelFolders(root)
    unet = UNet2DConditionModel.from_pretrained(folders.folder("checkpoints") / DEMO_SDXL / "unet")
    target = folders.folder("controlnet")
    _demo_controlnet(unet, seed=30).save_pretrained(target / DEMO_XL_CANNY)
    import inspect

    torch.manual_seed(31)
    accepted = set(inspect.signature(ControlNetUnionModel.__init__).parameters)
    config = {k: v for k, v in dict(unet.config).items() if k in accepted and k != "in_channels"}
    width = unet.config.block_out_channels[0]  # the union's control-type transformer is as wide as level 0
    union = ControlNetUnionModel(**config, conditioning_embedding_out_channels=DEMO_HINT_CHANNELS,
                                 num_trans_channel=width, num_proj_channel=width, num_trans_head=4)
    with torch.no_grad():
        for conv in [*union.controlnet_down_blocks, union.controlnet_mid_block, union.controlnet_cond_embedding.conv_out]:
            conv.weight.normal_(0.0, 0.05)
            conv.bias.normal_(0.0, 0.05)
    union.save_pretrained(target / DEMO_XL_UNION)
