"""Demo models written as A1111 single files: the diffusers pipeline's weights renamed to the
original LDM key layout (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``), as ``.safetensors`` or a Lightning-style ``.ckpt``, in
fp16 or fp32 — the files a designer finds on Civitai, made from a model whose pixels are known.

The renaming is written out here, independently of the loader (which uses diffusers' LDM →
diffusers maps), so a test that round-trips through both checks one against the other.
"""

from __future__ import annotations

from pathlib import Path

import torch

_RESNET = (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
           ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection."))
_VAE_RESNET = (("conv_shortcut.", "nin_shortcut."),)
_VAE_ATTENTION = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out."))


def _rename(rest: str, pairs) -> str:
    for new, old in pairs:
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    names = unet_ldm_names(unet)
    return {"model.diffusion_model." + names[key]: value for key, value in unet.state_dict().items()}


def unet_ldm_names(unet) -> dict[str, str]:
    """Each U-Net state-dict key's LDM name (without ``model.diffusion_model.``)."""
    layers = unet.config.layers_per_block
    attends_up = [t.startswith("CrossAttn") for t in unet.config.up_block_types]
    out = {}
    for key in unet.state_dict():
        parts = key.split(".")
        if key.startswith("time_embedding.linear_1."):
            new = "time_embed.0." + parts[-1]
        elif key.startswith("time_embedding.linear_2."):
            new = "time_embed.2." + parts[-1]
        elif key.startswith("add_embedding.linear_1."):  # SDXL's size and pooled-text embedding
            new = "label_emb.0.0." + parts[-1]
        elif key.startswith("add_embedding.linear_2."):
            new = "label_emb.0.2." + parts[-1]
        elif key.startswith("conv_in."):
            new = "input_blocks.0.0." + parts[-1]
        elif key.startswith("conv_norm_out."):
            new = "out.0." + parts[-1]
        elif key.startswith("conv_out."):
            new = "out.2." + parts[-1]
        elif key.startswith("down_blocks."):
            level, kind = int(parts[1]), parts[2]
            rest = ".".join(parts[4:])
            if kind == "downsamplers":
                new = f"input_blocks.{(level + 1) * (layers + 1)}.0.op." + ".".join(parts[5:])
            else:
                block = level * (layers + 1) + int(parts[3]) + 1
                new = f"input_blocks.{block}." + ("0." + _rename(rest, _RESNET) if kind == "resnets" else "1." + rest)
        elif key.startswith("up_blocks."):
            level, kind = int(parts[1]), parts[2]
            rest = ".".join(parts[4:])
            if kind == "upsamplers":
                block = level * (layers + 1) + layers
                new = f"output_blocks.{block}.{2 if attends_up[level] else 1}." + ".".join(parts[4:])
            else:
                block = level * (layers + 1) + int(parts[3])
                new = f"output_blocks.{block}." + ("0." + _rename(rest, _RESNET) if kind == "resnets" else "1." + rest)
        elif key.startswith("mid_block."):
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = "middle_block.1." + rest if kind == "attentions" else f"middle_block.{2 * index}." + _rename(rest, _RESNET)
        else:
            raise ValueError(f"no LDM name for U-Net key {key}")
        out[key] = new
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        parts = key.split(".")
        side = parts[0]
        if side in ("quant_conv", "post_quant_conv"):
            new = key
        elif parts[1] in ("conv_in", "conv_out"):
            new = key
        elif parts[1] == "conv_norm_out":
            new = f"{side}.norm_out." + parts[-1]
        elif parts[1] == "mid_block":
            kind, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "attentions":
                new = f"{side}.mid.attn_1." + _rename(rest, _VAE_ATTENTION)
                if value.ndim == 2 and not rest.startswith("group_norm"):
                    value = value[:, :, None, None]  # LDM's VAE attention is 1x1 convolutions
            else:
                new = f"{side}.mid.block_{index + 1}." + _rename(rest, _VAE_RESNET)
        elif parts[1] in ("down_blocks", "up_blocks"):
            level, kind = int(parts[2]), parts[3]
            ldm_level = level if side == "encoder" else levels - 1 - level
            group = "down" if side == "encoder" else "up"
            if kind in ("downsamplers", "upsamplers"):
                sampler = "downsample" if kind == "downsamplers" else "upsample"
                new = f"{side}.{group}.{ldm_level}.{sampler}." + ".".join(parts[5:])
            else:
                new = f"{side}.{group}.{ldm_level}.block.{parts[4]}." + _rename(".".join(parts[5:]), _VAE_RESNET)
        else:
            raise ValueError(f"no LDM name for VAE key {key}")
        out["first_stage_model." + new] = value
    return out


def to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's weights under the original LDM names (SD 1.x layout)."""
    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    for key, value in pipe.text_encoder.state_dict().items():
        # LDM files always say text_model. (transformers >= 5.6 no longer wraps CLIPTextModel in it)
        state["cond_stage_model.transformer." + ("" if key.startswith("text_model.") else "text_model.") + key] = value
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def save_single_file(pipe, path: Path, dtype: torch.dtype = torch.float32, ema: bool = False) -> Path:
    """Write ``pipe`` as one checkpoint file: ``.safetensors`` or a Lightning-style ``.ckpt``
    (``{"state_dict": ..., "global_step": ...}``). ``ema``: add a ``model_ema.*`` copy of the
    U-Net (scaled, so that loading it by mistake would show), as un-pruned training files have."""
    state = {k: v.to(dtype) for k, v in to_ldm(pipe).items()}
    if ema:
        for key, value in list(state.items()):
            if key.startswith("model.diffusion_model."):
                state["model_ema." + key[len("model."):].replace(".", "")] = value * 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state, "global_step": 1, "epoch": 0}, path)
    return path
