"""The demo SDXL models: SDXL's layout at tiny widths — two CLIP text encoders (the second with
its projection, the pooled embedding SDXL's U-Net takes with the size conditioning), both
tokenizers built from the CLIP byte-pair vocabulary we ship (the second pads with ``!`` as
OpenCLIP-G does), a U-Net with SDXL's three levels (the first without attention), ``text_time``
additional embeddings and per-level transformer depths, and a VAE with SDXL's scaling factor.

Written as a diffusers folder (``danqing-demo-xl``), a 9-channel inpainting folder, and an
A1111/Civitai single file in SDXL's LDM key layout (``conditioner.embedders.0.transformer.``,
``conditioner.embedders.1.model.``), in fp16 like the files on Civitai.
"""

from __future__ import annotations

from pathlib import Path

import torch

DEMO_SDXL = "danqing-demo-xl"
DEMO_SDXL_INPAINT = "danqing-demo-xl-inpainting"
DEMO_SDXL_SINGLE = "danqing-demo-xl-single.safetensors"
SDXL_SCALING = 0.13025
TIME_EMBED = 8  # addition_time_embed_dim (256 in SDXL)


def _encoders(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ..formats.checkpoint import clip_tokenizer, family_of_name

    family = family_of_name("sdxl")
    tokenizer, tokenizer_2 = clip_tokenizer(family), clip_tokenizer(family, second=True)
    torch.manual_seed(seed)
    common = dict(vocab_size=49408, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, hidden_act="quick_gelu", pad_token_id=49407,
                                                **common))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=32, projection_dim=32, hidden_act="gelu",
                                                                pad_token_id=0, **common))
    return tokenizer, tokenizer_2, text_encoder, text_encoder_2


def tiny_sdxl_unet(in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(1, 1, 1),  # SDXL's 64-channel heads (a single file does not say them)
        cross_attention_dim=64,  # 32 + 32: both encoders' hidden states side by side
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=32 + 6 * TIME_EMBED,
        norm_num_groups=32,
    )


def build_sdxl(seed: int, in_channels: int = 4):
    """A tiny StableDiffusionXL(Inpaint)Pipeline with fresh random weights."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

    from .sd import tiny_vae

    tokenizer, tokenizer_2, text_encoder, text_encoder_2 = _encoders(seed)
    torch.manual_seed(seed + 100)
    unet = tiny_sdxl_unet(in_channels)
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=SDXL_SCALING)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    cls = StableDiffusionXLInpaintPipeline if in_channels == 9 else StableDiffusionXLPipeline
    return cls(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
               tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)


def save_sdxl(folder: Path, seed: int, in_channels: int = 4):
    pipe = build_sdxl(seed, in_channels)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


# The single file: SDXL's LDM names -------------------------------------------------------------
def open_clip_state(text_encoder_2, prefix: str = "conditioner.embedders.1.model.") -> dict:
    """A CLIPTextModelWithProjection's weights in OpenCLIP's layout (fused q/k/v, ``ln_*``,
    ``c_fc``/``c_proj``, the projection stored transposed)."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder_2.state_dict().items()}
    out = {
        "token_embedding.weight": state["embeddings.token_embedding.weight"],
        "positional_embedding": state["embeddings.position_embedding.weight"],
        "ln_final.weight": state["final_layer_norm.weight"],
        "ln_final.bias": state["final_layer_norm.bias"],
        "text_projection": state["text_projection.weight"].T.contiguous(),
    }
    layers = text_encoder_2.config.num_hidden_layers
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for i in range(layers):
        head = f"encoder.layers.{i}."
        block = f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[block + f"attn.in_proj_{part}"] = torch.cat(
                [state[head + f"self_attn.{p}_proj.{part}"] for p in ("q", "k", "v")])
            for new, old in names.items():
                out[block + f"{old}.{part}"] = state[head + f"{new}.{part}"]
    return {prefix + k: v for k, v in out.items()}


def sdxl_to_ldm(pipe) -> dict[str, torch.Tensor]:
    from .single_file import unet_to_ldm, vae_to_ldm

    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    for key, value in pipe.text_encoder.state_dict().items():
        state["conditioner.embedders.0.transformer." + ("" if key.startswith("text_model.") else "text_model.") + key] = value
    state.update(open_clip_state(pipe.text_encoder_2))
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def save_sdxl_single_file(pipe, path: Path, dtype: torch.dtype = torch.float16, v_pred: bool = False) -> Path:
    """``pipe`` as a Civitai-style SDXL ``.safetensors``; ``v_pred``: with the empty ``v_pred`` and
    ``ztsnr`` keys NoobAI-XL v-pred files carry (what A1111/Forge read)."""
    from safetensors.torch import save_file

    state = {k: v.to(dtype) for k, v in sdxl_to_ldm(pipe).items()}
    if v_pred:
        state["v_pred"] = torch.tensor([])
        state["ztsnr"] = torch.tensor([])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt", "modelspec.architecture": "stable-diffusion-xl-v1-base"})
    return path


def save_demo_sdxl(checkpoints: Path) -> None:
    """The tiny SDXL folder, its inpainting twin and its single file."""
    pipe = save_sdxl(checkpoints / DEMO_SDXL, seed=20)
    save_sdxl(checkpoints / DEMO_SDXL_INPAINT, seed=21, in_channels=9)
    save_sdxl_single_file(pipe, checkpoints / DEMO_SDXL_SINGLE)


# LoRAs for the tiny SDXL --------------------------------------------------------------------------
DEMO_SDXL_LORAS = {
    # Kohya's SDXL layout: LDM U-Net names, lora_te1_/lora_te2_, alpha, LoCon convolutions, ss_* metadata
    "kohya": "danqing-demo-xl-kohya.safetensors",
    # diffusers/peft: unet. / text_encoder. / text_encoder_2. with lora_A/lora_B
    "peft": "danqing-demo-xl-peft.safetensors",
    # An SDXL-Lightning-style 4-step LoRA over the whole U-Net, under ByteDance's file name
    "lightning": "sdxl_lightning_4step_lora-tiny.safetensors",
}


def save_demo_sdxl_loras(root: Path) -> dict[str, Path]:
    """Seeded tiny LoRAs for ``checkpoints/danqing-demo-xl``, built from its own module names."""
    import json

    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .lora import FEWSTEP_TARGETS
    from .single_file import unet_ldm_names

    base = Path(root) / "checkpoints" / DEMO_SDXL
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    encoders = {"text_encoder": CLIPTextModel.from_pretrained(base / "text_encoder"),
                "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(base / "text_encoder_2")}
    ldm = {k.removesuffix(".weight"): v.removesuffix(".weight") for k, v in unet_ldm_names(unet).items()
           if k.endswith(".weight")}
    attention = [(n, m) for n, m in unet.named_modules() if ".attn" in n and isinstance(m, torch.nn.Linear)]
    convs = [(n, m) for n, m in unet.named_modules() if n.endswith("resnets.0.conv1")]  # LoCon
    text = {c: [(n if n.startswith("text_model.") else "text_model." + n, m) for n, m in e.named_modules()
                if isinstance(m, torch.nn.Linear) and ".layers." in n] for c, e in encoders.items()}
    folder = Path(root) / "lora"
    folder.mkdir(parents=True, exist_ok=True)
    written = {kind: folder / name for kind, name in DEMO_SDXL_LORAS.items()}

    def pair(module, rank, g, scale=0.3):
        if isinstance(module, torch.nn.Conv2d):
            shapes = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        else:
            shapes = (rank, module.in_features), (module.out_features, rank)
        return [(torch.randn(s, generator=g) * scale).contiguous() for s in shapes]

    # 1. Kohya SDXL
    g = torch.Generator().manual_seed(606)
    state = {}
    rows = [("lora_unet_" + ldm[n].replace(".", "_"), m) for n, m in attention + convs]
    rows += [("lora_te1_" + n.replace(".", "_"), m) for n, m in text["text_encoder"]]
    rows += [("lora_te2_" + n.replace(".", "_"), m) for n, m in text["text_encoder_2"]]
    for key, module in rows:
        state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = pair(module, 4, g)
        state[f"{key}.alpha"] = torch.tensor(2.0)
    save_file(state, written["kohya"], metadata={
        "ss_base_model_version": "sdxl_base_v1-0", "ss_sd_model_name": DEMO_SDXL, "ss_network_module": "networks.lora",
        "ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_output_name": "danqing-demo-xl-kohya",
        "ss_tag_frequency": json.dumps({"10_gongbi": {"gongbi": 9, "peony": 4}})})
    # 2. diffusers/peft SDXL
    g = torch.Generator().manual_seed(707)
    state = {}
    for prefix, layers in (("unet", attention), *((c, [(n.removeprefix("text_model."), m) for n, m in text[c]])
                                                   for c in ("text_encoder", "text_encoder_2"))):
        for name, module in layers:
            state[f"{prefix}.{name}.lora_A.weight"], state[f"{prefix}.{name}.lora_B.weight"] = pair(module, 4, g)
    save_file(state, written["peft"], metadata={"format": "pt"})
    # 3. A Lightning-style distillation LoRA: the whole U-Net, Kohya names, no text encoder
    g = torch.Generator().manual_seed(808)
    state = {}
    for name, module in unet.named_modules():
        if name.endswith(FEWSTEP_TARGETS) and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            key = "lora_unet_" + ldm[name].replace(".", "_")
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = pair(module, 4, g, 0.15)
            state[f"{key}.alpha"] = torch.tensor(4.0)
    save_file(state, written["lightning"], metadata={"format": "pt"})
    return written
