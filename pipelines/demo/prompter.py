"""The demo prompter: a tiny Qwen2-style instruct model laid out like
Qwen/Qwen2.5-0.5B-Instruct (what 提示词扩写 suggests): ``config.json``, safetensors weights and a
fast tokenizer (``tokenizer.json``, a byte-pair model trained here on Chinese and English prompt
phrases, with Qwen's ``<|im_start|>`` / ``<|im_end|>`` chat template). Random weights: it writes
real pieces of prompt words in a random order, enough to see expansion, seeding and editing work."""

from __future__ import annotations

import json
from pathlib import Path

DEMO_PROMPTER = "danqing-demo-qwen-prompter"

# Qwen2.5's chat template, reduced to system/user/assistant turns.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer(vocab_size: int = 600):
    """A Qwen-style fast tokenizer trained here: byte-level BPE (any Chinese or English text
    tokenizes, byte by byte where the vocabulary has no piece), Qwen's special tokens and chat
    template. The demo prompter's and the demo Z-Image's Qwen3 encoder's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    phrases = json.loads(Path(__file__).with_name("phrases.json").read_text(encoding="utf-8"))
    corpus = phrases["zh"] + phrases["en"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_demo_prompter(folder: Path, seed: int = 61) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fast = qwen_tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"), tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.max_new_tokens = 12  # a random model rambles: keep its words few
    model.save_pretrained(folder, safe_serialization=True)
    return folder
