"""The demo base models: a PAI-Diffusion-shaped SD 1.x pipeline at tiny widths (BertTokenizer
with a Chinese WordPiece ``vocab.txt`` and a 32-token window, CLIP text encoder), saved as a
diffusers folder with ``.bin`` or safetensors weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


DEMO_MODEL = "danqing-demo-zh"


DEMO_MODEL_SAFETENSORS = "danqing-demo-st"


DEMO_MODEL_INPAINT = "danqing-demo-inpainting"


TOKEN_WINDOW = 32


def write_vocab(folder: Path) -> None:
    """A Chinese WordPiece vocabulary like bert-base-chinese's: specials, ASCII, every CJK
    ideograph of the basic block (so any Chinese prompt tokenizes without [UNK])."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ascii_tokens = [chr(c) for c in range(33, 127)]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = [f"##{c}" for c in letters]
    cjk = [chr(c) for c in range(0x4E00, 0xA000)]
    # Full-width and CJK punctuation (U+3000 block and U+FF01-FF5E).
    punct = [chr(c) for c in (*range(0x3001, 0x3012), *range(0xFF01, 0xFF5F))]
    tokens = specials + ascii_tokens + pieces + cjk + punct
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "BertTokenizer",
        "model_max_length": TOKEN_WINDOW,
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def tiny_vae():
    """The demo pipelines' VAE shape (SD's four levels at tiny widths), fresh random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
    )


def build_sd_components(folder: Path, seed: int, unet_channels: int = 4):
    """Tiny SD 1.x components with the PAI layout (BertTokenizer + CLIP text encoder);
    ``unet_channels=9``: a dedicated inpainting U-Net (latents + mask + masked image)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import BertTokenizer, CLIPTextConfig, CLIPTextModel

    # Tokenizers are built from files on disk: in transformers 5 the vocab_file argument of
    # BertTokenizer(...) is ignored, from_pretrained(dir) is the reliable way.
    tok_dir = folder / "_tokenizer_src"
    write_vocab(tok_dir)
    tokenizer = BertTokenizer.from_pretrained(tok_dir)
    shutil.rmtree(tok_dir)

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TOKEN_WINDOW,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=unet_channels,
        out_channels=4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = tiny_vae()
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def save_sd_pipeline(folder: Path, seed: int, safe_serialization: bool, inpainting: bool = False):
    """``inpainting``: a 9-channel U-Net, saved as diffusers' inpainting pipeline (the layout of
    stable-diffusion-inpainting and its Chinese fine-tunes)."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    components = build_sd_components(folder, seed, unet_channels=9 if inpainting else 4)
    cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    pipe = cls(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(folder, safe_serialization=safe_serialization)
    # Published PAI repositories ship the tokenizer as a plain WordPiece vocab.txt.
    shutil.rmtree(folder / "tokenizer")
    write_vocab(folder / "tokenizer")
    if not safe_serialization:
        # transformers 5 always writes safetensors; PAI's text encoder is pytorch_model.bin.
        encoder_dir = folder / "text_encoder"
        (encoder_dir / "model.safetensors").unlink()
        state = {k: v.contiguous() for k, v in pipe.text_encoder.state_dict().items()}
        torch.save(state, encoder_dir / "pytorch_model.bin")
    return pipe
