"""What 提示词扩写 adds to a job, and what it holds while idle.

    python -m bench.expand

A full-size Qwen2.5-0.5B-Instruct architecture (24 layers, width 896, 151 936-token vocabulary,
494 M parameters; random weights, the demo prompter's tokenizer and chat template) saved in
models/prompters, then one expansion of a short prompt through ``tasks/expand.expand_text`` the
way a job runs it (load, generate, free). A random model never stops by itself, so the answer is
made exactly 60 tokens long (the most the expander asks for). Memory: resident set before,
during (peak) and after.
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from pathlib import Path


def main() -> dict:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from bench.__main__ import PeakMemory
    from pipelines.demo.prompter import save_demo_prompter
    from pipelines.store import ModelStore
    from pipelines.store.settings import EngineSettings
    from pipelines.tasks import expand

    root = Path(tempfile.mkdtemp(prefix="danqing-bench-expand-"))
    folder = root / "models" / "prompters" / "qwen2.5-0.5b-random"
    save_demo_prompter(folder)  # tokenizer and chat template
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = 151936
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    model.generation_config.min_new_tokens = expand.MAX_NEW_TOKENS
    # Only ids the (small) demo tokenizer can spell come out; the compute is the full vocabulary's.
    model.generation_config.suppress_tokens = list(range(len(tokenizer), vocab))
    model.save_pretrained(folder, safe_serialization=True)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    store = ModelStore(EngineSettings(model="none", models_dir=root / "models", device="cpu", dtype="fp32"))
    runs = []
    with PeakMemory(torch.device("cpu")) as memory:
        for _ in range(2):
            started = time.perf_counter()
            words = expand.expand_text(store, folder.name, "雨后的西湖", seed=1, language="zh")
            runs.append(round(time.perf_counter() - started, 2))
    gc.collect()
    before, after = memory.start, memory._rss()
    result = {"parameters": parameters, "new_tokens": expand.MAX_NEW_TOKENS, "seconds_runs": runs,
              "rss_before_mib": round(before / 2**20), "rss_peak_mib": round((before + memory.peak) / 2**20),
              "rss_after_mib": round(after / 2**20), "held_while_idle_mib": round((after - before) / 2**20),
              "words": words[:80]}
    print(json.dumps(result, ensure_ascii=False, indent=1))
    return result


if __name__ == "__main__":
    main()
