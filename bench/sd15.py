"""A full-size SD 1.5-architecture pipeline with random weights, saved in a folder.

Random weights cost exactly the compute of real ones, so speed and memory figures hold for
real models. The text side is PAI-Diffusion's: a CLIP text encoder (768 wide, 12 layers)
with a Chinese WordPiece BertTokenizer and a 32-token window, as Danqing's default model.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)


def build_sd15(folder: Path, seed: int = 0) -> Path:
    """Write the pipeline to ``folder`` (skipped when it is already there)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import BertTokenizer, CLIPTextConfig, CLIPTextModel

    from pipelines.demo.sd import TOKEN_WINDOW, write_vocab

    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    started = time.perf_counter()
    write_vocab(folder / "tokenizer")
    tokenizer = BertTokenizer.from_pretrained(folder / "tokenizer")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=TOKEN_WINDOW,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        )
    )
    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(**SD15_VAE)
    # Random init gives huge activations in 16 deep blocks; scale weights down so outputs stay
    # finite in fp16 too (compute is unchanged).
    with torch.no_grad():
        for module in (unet, vae, text_encoder):
            for p in module.parameters():
                if p.dim() > 1:
                    p.mul_(0.5)
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # Like PAI's repositories: the tokenizer is a plain WordPiece vocab.txt.
    shutil.rmtree(folder / "tokenizer")
    write_vocab(folder / "tokenizer")
    (folder / "BENCH.json").write_text(json.dumps({"seconds_to_build": round(time.perf_counter() - started, 1)}))
    return folder


def model_folder(root: Path, quick: bool) -> Path:
    """The benchmarks' model: full-size SD 1.5 with random weights, or (``quick``) the demo's
    tiny one that only checks the plumbing; built once under ``root``."""
    if not quick:
        return build_sd15(Path(root) / "sd15-random")
    from pipelines.demo import save_sd_pipeline

    folder = Path(root) / "sd-tiny"
    if not (folder / "model_index.json").exists():
        save_sd_pipeline(folder, seed=0, safe_serialization=True)
    return folder
