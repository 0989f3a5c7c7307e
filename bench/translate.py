"""What the translator adds to a job, and what it holds while idle.

    python -m bench.translate

A full-size opus-mt-zh-en architecture (MarianMT: 6 + 6 layers, width 512, 65 001-token
vocabulary; random weights, the demo's SentencePiece tokenizers) saved as a folder in
models/translators, then a typical prompt (four phrases) and negative prompt (two) through
``tasks/translate.translate_texts`` the way a job calls it: cold (load, translate, free), and
again (the cache). A random model never says "end", so every phrase is made exactly 20 tokens
long (a real translation of a prompt phrase is about that or shorter) with 4 beams, as
opus-mt-zh-en's generation config asks. Memory: resident set before, during (peak) and after.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from pathlib import Path

PROMPT = "雨后的西湖，远山，小船，水墨画"
NEGATIVE = "模糊，低质量"


def main() -> dict:
    import torch
    from transformers import MarianConfig, MarianMTModel

    from bench.__main__ import PeakMemory
    from pipelines.demo.translator import save_demo_translator
    from pipelines.store import ModelStore
    from pipelines.store.settings import EngineSettings
    from pipelines.tasks import translate

    root = Path(tempfile.mkdtemp(prefix="danqing-bench-translate-"))
    folder = root / "models" / "translators" / "opus-mt-zh-en-random"
    save_demo_translator(folder)  # the tokenizer files
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=65001, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                          decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                          max_position_embeddings=512, pad_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"],
                          decoder_start_token_id=vocab["<pad>"])
    model = MarianMTModel(config)
    model.generation_config.num_beams = 4
    model.generation_config.min_new_tokens = 20
    # Only ids the (small) demo tokenizer can spell come out; the compute is the full vocabulary's.
    model.generation_config.suppress_tokens = list(range(len(vocab), 65001))
    model.save_pretrained(folder, safe_serialization=True)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    translate.MAX_NEW_TOKENS = 20
    store = ModelStore(EngineSettings(model="none", models_dir=root / "models", device="cpu", dtype="fp32"))
    rows = {}
    with PeakMemory(torch.device("cpu")) as memory:
        for run in ("cold", "cached"):
            started = time.perf_counter()
            english = translate.translate_texts(store, folder.name, [PROMPT, NEGATIVE])
            rows[run] = round(time.perf_counter() - started, 3)
    gc.collect()
    before, after = memory.start, memory._rss()
    result = {"parameters": parameters, "seconds_cold": rows["cold"], "seconds_cached": rows["cached"],
              "rss_before_mib": round(before / 2**20), "rss_peak_mib": round((before + memory.peak) / 2**20),
              "rss_after_mib": round(after / 2**20), "held_while_idle_mib": round((after - before) / 2**20),
              "phrases": 6, "english": english}
    print(json.dumps(result, ensure_ascii=False, indent=1))
    return result


if __name__ == "__main__":
    main()
