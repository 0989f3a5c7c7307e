"""A tiny random BLIP captioner laid out like IDEA-CCNL/Taiyi-BLIP-750M-Chinese: a ``blip``
config and weights, ``preprocessor_config.json`` naming the BlipProcessor, and a Chinese
WordPiece ``vocab.txt`` with its ``tokenizer_config.json`` (no ``tokenizer.json``). Its captions
are random Chinese characters: the weights are random."""

from __future__ import annotations

import json
from pathlib import Path

from .sd import write_vocab

DEMO_CAPTIONER = "danqing-demo-blip-zh"


def save_demo_captioner(folder: Path, seed: int = 17) -> Path:
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    write_vocab(folder)
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, bos_token_id=tokenizer.cls_token_id,
                sep_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.sep_token_id)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=64,
                  patch_size=16)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).eval()
    model.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64,
         "processor_class": "BlipProcessor"}), encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "BlipImageProcessor", "processor_class": "BlipProcessor", "do_resize": True,
         "size": {"height": 64, "width": 64}, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
         "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
         "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}), encoding="utf-8")
    return folder
