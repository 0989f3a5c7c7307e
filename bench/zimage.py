"""A Z-Image (造相) pipeline at full width with fewer layers, random weights, as a diffusers folder.

Tongyi-MAI/Z-Image-Turbo's shapes: the transformer at its full width (dim 3840, 30 heads of
128, rope axes 32/48/48, caption width 2560) with ``layers`` main blocks (the real one has 30)
and ``refiners`` noise/context refiner blocks each side (2); its Qwen3-4B text encoder at full
width (2560, 32 heads, 8 KV heads, FFN 9728, the full 151,936-token embedding) with
``text_layers`` layers (36); the 16-channel Flux autoencoder at full size; the Turbo scheduler
(flow-matching Euler, shift 3). Every step costs what a real step costs per block: a 30-layer
step is about (30 + 2·2) / (layers + 2·refiners) times the one measured here. The tokenizer is
the demo's Qwen-style byte-level BPE (the real vocabulary is not shipped; the embedding keeps
the real size)."""

from __future__ import annotations

import json
import time
from pathlib import Path

FLUX_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=16, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)


def zimage_transformer(layers: int = 4, refiners: int = 1, seed: int = 0):
    import torch
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    model = ZImageTransformer2DModel(in_channels=16, dim=3840, n_layers=layers, n_refiner_layers=refiners,
                                     n_heads=30, n_kv_heads=30, cap_feat_dim=2560, axes_dims=[32, 48, 48],
                                     axes_lens=[1536, 512, 512])
    with torch.no_grad():
        model.x_pad_token.normal_(0, 0.02)
        model.cap_pad_token.normal_(0, 0.02)
    return model


def build_zimage_full(folder: Path, layers: int = 4, refiners: int = 1, text_layers: int = 2, seed: int = 0,
                      vocab: int = 151936) -> Path:
    """Write the pipeline to ``folder`` (skipped when it is already there), in bf16 (as the
    hub ships it); loaded in whatever dtype the run asks for. ``vocab``: the embedding's rows
    (the real 151,936 for timing; a test may keep only the tokenizer's)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import Qwen3Config, Qwen3Model

    from pipelines.demo.prompter import qwen_tokenizer

    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    started = time.perf_counter()
    tokenizer = qwen_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=vocab, hidden_size=2560, intermediate_size=9728,
                                          num_hidden_layers=text_layers, num_attention_heads=32, num_key_value_heads=8,
                                          head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0,
                                          pad_token_id=tokenizer.pad_token_id))
    transformer = zimage_transformer(layers, refiners, seed + 1)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**FLUX_VAE)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)
    pipe.to(torch.bfloat16)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "BENCH.json").write_text(json.dumps({"seconds_to_build": round(time.perf_counter() - started, 1),
                                                   "layers": layers, "refiners": refiners,
                                                   "text_layers": text_layers}))
    return folder
