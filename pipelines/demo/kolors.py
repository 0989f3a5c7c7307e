"""The demo Kolors (可图) model: Kwai-Kolors/Kolors-diffusers' layout at tiny widths — a ChatGLM3
text encoder that reads Chinese (diffusers' own ``ChatGLMModel``), its SentencePiece tokenizer
(``tokenizer.model``, trained here on Chinese phrases with byte fallback, so any Chinese prompt
tokenizes), an SDXL U-Net whose text projection takes ChatGLM's hidden states
(``encoder_hid_dim_type="text_proj"``) and whose size embedding takes ChatGLM's pooled state,
the SDXL VAE shape and Kolors' Euler (1100 training steps). Written as a diffusers folder and
loaded back through the store."""

from __future__ import annotations

import io
import json
from pathlib import Path

DEMO_KOLORS = "danqing-demo-kolors"
TIME_EMBED = 8


def _tokenizer(folder: Path):
    import sentencepiece as spm

    from diffusers.pipelines.kolors import ChatGLMTokenizer

    phrases = json.loads(Path(__file__).with_name("phrases.json").read_text(encoding="utf-8"))["zh"]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(phrases * 10), model_writer=model, vocab_size=400,
                                   character_coverage=1.0, model_type="bpe", byte_fallback=True,
                                   hard_vocab_limit=False, minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return ChatGLMTokenizer(str(folder / "tokenizer.model"))


def build_kolors(folder: Path, seed: int = 50):
    import torch
    from diffusers import EulerDiscreteScheduler, KolorsPipeline, UNet2DConditionModel
    from diffusers.pipelines.kolors import ChatGLMModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    from .sd import tiny_vae

    tokenizer = _tokenizer(folder / "_tokenizer")
    torch.manual_seed(seed)
    vocab = (len(tokenizer) + 63) // 64 * 64
    text_encoder = ChatGLMModel(ChatGLMConfig(num_layers=2, padded_vocab_size=vocab, hidden_size=32, ffn_hidden_size=64,
                                              kv_channels=8, num_attention_heads=4, seq_length=256,
                                              multi_query_attention=True, multi_query_group_num=2,
                                              original_rope=True, torch_dtype="float32"), empty_init=False)
    with torch.no_grad():  # ChatGLM's RMSNorm weights are left uninitialised (a checkpoint fills them)
        for name, param in text_encoder.named_parameters():
            if "layernorm" in name:
                param.fill_(1.0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=(1, 1, 1), cross_attention_dim=64,
        encoder_hid_dim=32, encoder_hid_dim_type="text_proj", use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=32 + 6 * TIME_EMBED, norm_num_groups=32,
    )
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.13025)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.014, beta_schedule="scaled_linear",
                                       num_train_timesteps=1100, steps_offset=1, timestep_spacing="leading")
    return KolorsPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                          force_zeros_for_empty_prompt=False)


def save_demo_kolors(checkpoints: Path) -> Path:
    import shutil

    folder = checkpoints / DEMO_KOLORS
    pipe = build_kolors(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(folder / "_tokenizer", ignore_errors=True)
    return folder


DEMO_KOLORS_LORA = "danqing-demo-kolors-lora.safetensors"


def save_demo_kolors_lora(root: Path, rank: int = 4, seed: int = 51) -> Path:
    """A U-Net LoRA for the demo Kolors in the layout Kolors' own (diffusers) training script
    writes: ``unet.<module>.lora_A/lora_B.weight`` on every attention projection; no text
    encoder (Kolors LoRAs leave ChatGLM alone)."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(Path(root) / "checkpoints" / DEMO_KOLORS / "unet")
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if ".attn" in name and isinstance(module, torch.nn.Linear) and "transformer_blocks" in name:
            state[f"unet.{name}.lora_A.weight"] = (torch.randn(rank, module.in_features, generator=g) * 0.3).contiguous()
            state[f"unet.{name}.lora_B.weight"] = (torch.randn(module.out_features, rank, generator=g) * 0.3).contiguous()
    folder = Path(root) / "lora"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / DEMO_KOLORS_LORA), metadata={"ss_base_model_version": "kolors"})
    return folder / DEMO_KOLORS_LORA
