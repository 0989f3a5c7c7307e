"""提示词扩写: a short prompt made into a detailed one by a small local instruct model in
models/prompters/ (a transformers causal LM with a chat template, such as Qwen2.5-0.5B/1.5B-Instruct;
local files only, no remote code run).

The model is asked for comma-separated visual details in Chinese when the loaded model reads
Chinese (PAI, Taiyi), in English otherwise, and its words are added after what the designer typed
(Fooocus' way: their words first and unchanged). Sampling is seeded by the job's seed, so the same
prompt and seed give the same expansion on any machine. Loaded for the job and freed after it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import torch

from ..errors import ModelError, ParamError
from ..store.devices import free_memory
from ..formats.weights import model_type

log = logging.getLogger(__name__)

SUGGESTED = "Qwen/Qwen2.5-0.5B-Instruct"
COMMA_ZH, STOP_ZH = chr(0xFF0C), chr(0x3002)  # full-width comma and full stop
MAX_NEW_TOKENS = 60
# What the model is asked, per language (data: formats/configs/expand.json).
_CONFIG = json.loads((Path(__file__).parents[1] / "formats" / "configs" / "expand.json").read_text(encoding="utf-8"))
INSTRUCTION: dict[str, str] = _CONFIG["instruction"]


def list_prompters(store) -> list[str]:
    """Folders under models/prompters holding a transformers causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return [name for name in store.folders.list_diffusers_dirs("prompters", "config.json")
            if model_type(store.folders.resolve("prompters", name)) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES]


def _load(store, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = store.folders.resolve("prompters", name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=store.plan.dtype)
    except Exception as exc:  # a broken folder is a sentence, never a crash
        log.exception("loading prompter %s failed", name)
        raise ModelError("prompter_load_failed", name=name) from exc
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("prompter_load_failed", name=name)
    return tokenizer, model.to(store.plan.device).eval()


def _clean(text: str) -> str:
    """One line of comma-separated words: no quotes, no trailing full stop, no repeats."""
    text = text.replace("\n", ", ").replace('"', "").replace("\ufffd", "").strip(" ,.;" + STOP_ZH + COMMA_ZH)
    parts = [p.strip() for p in re.split(r"[," + COMMA_ZH + "]", text) if p.strip()]
    return ", ".join(dict.fromkeys(parts))


def expand_text(store, name: str, prompt: str, seed: int, language: str) -> str:
    """The words ``name`` adds to ``prompt`` (seeded by ``seed``), cleaned; "" if none."""
    started = time.perf_counter()
    tokenizer, model = _load(store, name)
    try:
        messages = [{"role": "system", "content": INSTRUCTION[language]}, {"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = (ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids).to(model.device)
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            limit = min(MAX_NEW_TOKENS, model.generation_config.max_new_tokens or MAX_NEW_TOKENS)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=limit,
                                 do_sample=True, temperature=0.7, top_p=0.9,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        words = _clean(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    finally:
        del model
        free_memory(store.plan.device)
    log.info("expanded a prompt with %s in %.2fs", name, time.perf_counter() - started)
    return words


def expand_prompt(store, prompt: str, seed: int, language: str) -> tuple[str, str]:
    """(the prompt with the prompter's words after it, the prompter's name)."""
    names = list_prompters(store)
    if not names:
        raise ParamError("prompter_missing", suggestion=SUGGESTED, folder=str(store.folders.folder("prompters")))
    if not prompt.strip():
        raise ParamError("prompter_empty")
    words = expand_text(store, names[0], prompt, seed, language)
    sep = COMMA_ZH if language == "zh" else ", "
    return (prompt.rstrip(" ," + COMMA_ZH) + sep + words if words else prompt), names[0]
