"""A full-size SDXL-architecture pipeline with random weights, saved as a diffusers folder.

The shapes of stabilityai/stable-diffusion-xl-base-1.0 (U-Net 2.6 B parameters: 320/640/1280
channels, transformer depths 1/2/10, ``text_time`` size conditioning; CLIP ViT-L and OpenCLIP
ViT-bigG text encoders; the SDXL VAE), random weights (the compute of the real thing), both
tokenizers from the CLIP byte-pair vocabulary Danqing ships. Saved in fp16 (a 7 GB folder, as
the hub ships the fp16 variant); loaded in whatever dtype the run asks for.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)


def build_sdxl(folder: Path, seed: int = 0) -> Path:
    """Write the pipeline to ``folder`` (skipped when it is already there)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipelines.formats.checkpoint import clip_tokenizer, family_of_name

    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    started = time.perf_counter()
    family = family_of_name("sdxl")
    torch.manual_seed(seed)
    ids = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, hidden_act="quick_gelu", pad_token_id=49407,
                                                **ids))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
        projection_dim=1280, pad_token_id=0, **ids))
    unet = UNet2DConditionModel(**SDXL_UNET)
    vae = AutoencoderKL(**SDXL_VAE)
    # Random init gives huge activations through 70 transformer blocks; scale the weights down so
    # outputs stay finite in fp16 too (the compute is unchanged).
    with torch.no_grad():
        for module in (unet, vae, text_encoder, text_encoder_2):
            for p in module.parameters():
                if p.dim() > 1:
                    p.mul_(0.5)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=clip_tokenizer(family), tokenizer_2=clip_tokenizer(family, second=True),
                                     unet=unet, scheduler=scheduler)
    pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "BENCH.json").write_text(json.dumps({"seconds_to_build": round(time.perf_counter() - started, 1)}))
    return folder
