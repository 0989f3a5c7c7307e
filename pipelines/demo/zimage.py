"""The demo Z-Image (造相): Tongyi-MAI/Z-Image-Turbo's diffusers layout at tiny widths — the
single-stream DiT (``ZImageTransformer2DModel``: 2 layers, 1 refiner layer each side), a Qwen3
text encoder (``Qwen3Model``) with a Qwen-style byte-level BPE tokenizer trained here (any
Chinese prompt tokenizes), the 16-channel autoencoder with the Flux VAE's scaling and shift,
and the flow-matching Euler scheduler with Z-Image's shift. Written as a diffusers folder and
loaded back through the store, like a downloaded Z-Image."""

from __future__ import annotations

from pathlib import Path

DEMO_ZIMAGE = "danqing-demo-z-image-turbo"
# alibaba-pai's Z-Image-Turbo-Fun-Controlnet-Union at tiny width: a diffusers folder, and the
# same weights as the single .safetensors file alibaba-pai publishes.
DEMO_ZIMAGE_CONTROLNET = "demo-z-image-controlnet-union"
DEMO_ZIMAGE_CONTROLNET_FILE = "demo-z-image-controlnet-union.safetensors"
TEXT_WIDTH = 32  # the Qwen3 encoder's hidden size: the transformer's caption width


def tiny_flux_vae():
    """A 16-channel AutoencoderKL at tiny widths with the Flux VAE's latent scale and shift."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        latent_channels=16, norm_num_groups=8, sample_size=256, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def tiny_transformer(seed: int = 0, dim: int = 64, layers: int = 2, heads: int = 2):
    """Z-Image's transformer, few and narrow layers (head width 32 = the rope axes 8+12+12)."""
    import torch
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    model = ZImageTransformer2DModel(in_channels=16, dim=dim, n_layers=layers, n_refiner_layers=1, n_heads=heads,
                                     n_kv_heads=heads, cap_feat_dim=TEXT_WIDTH, axes_dims=[8, 12, 12],
                                     axes_lens=[256, 64, 64])
    with torch.no_grad():  # the pad tokens start as torch.empty: a checkpoint fills them
        model.x_pad_token.normal_(0, 0.02)
        model.cap_pad_token.normal_(0, 0.02)
    return model


def build_zimage(seed: int = 70):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import Qwen3Config, Qwen3Model

    from .prompter import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=64,
                                          num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                          head_dim=8, max_position_embeddings=40960, rope_theta=1000000.0,
                                          pad_token_id=tokenizer.pad_token_id))
    transformer = tiny_transformer(seed + 1)
    torch.manual_seed(seed + 2)
    vae = tiny_flux_vae()
    # Z-Image-Turbo's scheduler: flow matching, shift 3, no dynamic shifting.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)


def tiny_controlnet(seed: int = 80):
    """A union ControlNet for the demo transformer in the 2.x layout: one control layer beside
    its first block, one projected control refiner, 33 control channels (the map's latents, and
    for 局部重绘 the mask and the masked picture's latents), zero-free random weights."""
    import torch
    from diffusers import ZImageControlNetModel

    torch.manual_seed(seed)
    net = ZImageControlNetModel(control_layers_places=[0], control_refiner_layers_places=[0], control_in_dim=33,
                                add_control_noise_refiner="control_noise_refiner", dim=64, n_refiner_layers=1,
                                n_heads=2, n_kv_heads=2)
    with torch.no_grad():  # its output projections start at zero (as trained ones do not): wake them
        for name, param in net.named_parameters():
            if "after_proj" in name or "before_proj" in name:
                param.normal_(0, 0.5)
    return net


def save_demo_zimage(checkpoints: Path, controlnets: Path | None = None) -> Path:
    folder = checkpoints / DEMO_ZIMAGE
    build_zimage().save_pretrained(folder, safe_serialization=True)
    if controlnets is not None:
        from safetensors.torch import save_file

        net = tiny_controlnet()
        net.save_pretrained(controlnets / DEMO_ZIMAGE_CONTROLNET, safe_serialization=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(controlnets / DEMO_ZIMAGE_CONTROLNET_FILE))
    return folder


# ComfyUI's split files of the demo Z-Image (the same weights as its folder).
DEMO_ZIMAGE_SPLIT = "danqing-demo-z-image-turbo.safetensors"  # diffusion_models/
DEMO_QWEN_SPLIT = "danqing-demo-qwen3.safetensors"  # text_encoders/
DEMO_FLUX_VAE = "danqing-demo-ae.safetensors"  # vae/


def transformer_to_original(transformer) -> dict:
    """The transformer's weights under Z-Image's original names (what ComfyUI's
    ``diffusion_models/`` files hold): the inverse of diffusers' single-file converter."""
    import torch

    renames = (("all_final_layer.2-1.", "final_layer."), ("all_x_embedder.2-1.", "x_embedder."),
               (".attention.to_out.0.", ".attention.out."), (".attention.norm_k.", ".attention.k_norm."),
               (".attention.norm_q.", ".attention.q_norm."))
    state = transformer.state_dict()
    out = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            stem = key.replace(".attention.to_q.", ".attention.")
            parts = [state[key.replace(".to_q.", f".to_{x}.")] for x in "qkv"]
            key, value = stem.replace(".attention.weight", ".attention.qkv.weight"), torch.cat(parts)
        for old, new in renames:
            key = key.replace(old, new)
        out["model.diffusion_model." + key] = value.detach().contiguous().clone()
    return out


def write_split_files(pipe, root: Path, transformer: str | None, gguf: str | None, text_encoder: str,
                      vae: str) -> None:
    """A Z-Image pipeline as ComfyUI's split files under ``root``'s models layout: the
    transformer in the original key layout (as ``transformer`` safetensors and/or a Q8_0
    ``gguf``) in diffusion_models/, Qwen3 with ``model.`` keys in text_encoders/, the VAE with
    LDM keys in vae/."""
    from safetensors.torch import save_file

    from .single_file import vae_to_ldm

    for kind in ("diffusion_models", "text_encoders", "vae"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    original = transformer_to_original(pipe.transformer)
    if transformer:
        save_file(original, str(root / "diffusion_models" / transformer))
    if gguf:
        save_demo_zimage_gguf(original, root / "diffusion_models" / gguf)
    save_file({"model." + k: v.contiguous() for k, v in pipe.text_encoder.state_dict().items()},
              str(root / "text_encoders" / text_encoder))
    save_file({k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(pipe.vae).items()},
              str(root / "vae" / vae))


def save_demo_zimage_split(folder: Path, root: Path) -> None:
    """The demo Z-Image folder as ComfyUI's three files, under ``root``'s models layout, and its
    transformer as a Q8_0 GGUF beside them."""
    from diffusers import ZImagePipeline

    write_split_files(ZImagePipeline.from_pretrained(folder), root, DEMO_ZIMAGE_SPLIT, DEMO_ZIMAGE_GGUF,
                      DEMO_QWEN_SPLIT, DEMO_FLUX_VAE)


DEMO_ZIMAGE_GGUF = "danqing-demo-z-image-turbo-Q8_0.gguf"  # diffusion_models/, city96's layout


def save_demo_zimage_gguf(original: dict, path: Path, qtype: str = "Q8_0") -> Path:
    """The transformer's original-layout weights as a GGUF file the way city96's Z-Image GGUFs
    are made: linear weights whose rows fit the type's blocks (32 values for Q8_0, Q4_0, Q5_1...)
    quantised to ``qtype``, the rest (norms, biases, pad tokens, odd widths) kept in F32."""
    import gguf
    import numpy as np

    kind = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    writer = gguf.GGUFWriter(str(path), arch="lumina2")
    for key, tensor in original.items():
        name = key.removeprefix("model.diffusion_model.")
        array = tensor.float().numpy()
        if key.endswith(".weight") and array.ndim == 2 and array.shape[-1] % block == 0:
            data = gguf.quants.quantize(array, kind)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)
        else:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# The same Z-Image LoRA in the three layouts people publish (models/lora).
DEMO_ZIMAGE_LORAS = {
    "peft": "danqing-demo-zimage-lora.safetensors",  # diffusers/PEFT: transformer.<module>.lora_A/B
    "comfy": "danqing-demo-zimage-comfy.safetensors",  # ComfyUI/ai-toolkit: diffusion_model.<module>
    "kohya": "danqing-demo-zimage-kohya.safetensors",  # Kohya/musubi-tuner: lora_unet_<module_>, alpha
    # musubi-tuner on the original layout: the fused attention_qkv (q, k, v rows stacked), attention_out
    "fused": "danqing-demo-zimage-fused-qkv.safetensors",
}
ZIMAGE_LORA_TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
                       "feed_forward.w1", "feed_forward.w3")


def save_demo_zimage_loras(folder: Path, seed: int = 90, rank: int = 4) -> None:
    """Rank-4 matrices on both main blocks' attention and feed-forward layers of the demo
    transformer (q, k and v share their down matrix, as a LoRA on the fused qkv does); the
    Kohya files carry alpha = rank / 2 with their up matrices doubled, so all four mean the
    same LoRA."""
    import torch
    from safetensors.torch import save_file

    transformer = tiny_transformer()
    torch.manual_seed(seed)
    peft, comfy, kohya, fused = {}, {}, {}, {}
    original = {"attention.to_out.0": "attention.out"}  # the original layout's names
    for block in range(2):
        shared = torch.randn(rank, transformer.get_submodule(f"layers.{block}.attention.to_q").in_features) * 0.3
        ups = {}
        for target in ZIMAGE_LORA_TARGETS:
            module = transformer.get_submodule(f"layers.{block}.{target}")
            down = shared if target[-4:] in ("to_q", "to_k", "to_v") else torch.randn(rank, module.in_features) * 0.3
            up = torch.randn(module.out_features, rank) * 0.3
            path = f"layers.{block}.{target}"
            peft[f"transformer.{path}.lora_A.weight"], peft[f"transformer.{path}.lora_B.weight"] = down, up
            comfy[f"diffusion_model.{path}.lora_A.weight"], comfy[f"diffusion_model.{path}.lora_B.weight"] = down, up
            name = "lora_unet_" + path.replace(".", "_")
            kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"] = down, up * 2
            kohya[f"{name}.alpha"] = torch.tensor(rank / 2)
            if target[-4:] in ("to_q", "to_k", "to_v"):
                ups[target[-1]] = up
                continue
            name = "lora_unet_" + f"layers.{block}.{original.get(target, target)}".replace(".", "_")
            fused[f"{name}.lora_down.weight"], fused[f"{name}.lora_up.weight"] = down, up * 2
            fused[f"{name}.alpha"] = torch.tensor(rank / 2)
        name = f"lora_unet_layers_{block}_attention_qkv"
        fused[f"{name}.lora_down.weight"] = shared
        fused[f"{name}.lora_up.weight"] = torch.cat([ups["q"], ups["k"], ups["v"]]) * 2
        fused[f"{name}.alpha"] = torch.tensor(rank / 2)
    folder.mkdir(parents=True, exist_ok=True)
    for layout, state in (("peft", peft), ("comfy", comfy), ("kohya", kohya), ("fused", fused)):
        save_file({k: v.clone().contiguous() for k, v in state.items()}, str(folder / DEMO_ZIMAGE_LORAS[layout]),
                  metadata={"modelspec.architecture": "z-image-turbo/lora", "ss_base_model_version": "z_image_turbo"})
