"""Chinese prompts for models that read only English: a local translator in models/translators/.

Whether the loaded model reads Chinese is its family's answer (formats/families.reads_chinese:
PAI-Diffusion's and Taiyi's BERT encoders do, CLIP's and SDXL's do not). When it does not and
the prompt or negative prompt holds Chinese, the Chinese phrases (formats/prompt_translate.py:
``<lora:…>``, ``BREAK``, emphasis and its weights, embedding names and English words stay as
they are) are translated by a transformers model from models/translators/ — a seq2seq model such
as Helsinki-NLP/opus-mt-zh-en, or a small instruct model with a chat template — loaded for the
job and freed after it (nothing stays in memory while idle); translations are cached, so the
same phrase is translated once. Without a translator the job is refused with a sentence that
says which one to download, or the prompt goes as typed when the designer turned translation
off: never a picture that silently ignored the prompt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import replace

import torch

from ..errors import ModelError, ParamError
from ..store.devices import free_memory
from ..formats.weights import model_type
from ..formats.families import reads_chinese
from ..formats.prompt_translate import has_chinese, plan

log = logging.getLogger(__name__)

SUGGESTED = "Helsinki-NLP/opus-mt-zh-en"
CACHE_SIZE = 2048
MAX_NEW_TOKENS = 96
INSTRUCTION = ("Translate this image-generation prompt phrase from Chinese into natural English. "
               "Answer with the English only.")

_cache: OrderedDict = OrderedDict()  # (translator folder, mtime, phrase) -> English
_edits: OrderedDict = OrderedDict()  # (user, a whole prompt as typed) -> the English they wrote for it
_lock = threading.Lock()


def remember_edit(chinese: str, english: str, user: str = "") -> None:
    """The English ``user`` wrote for ``chinese`` (a whole prompt as typed): used instead of the
    translator's for that prompt and that user (a teammate's edit is theirs) from now on; an
    empty ``english`` forgets it."""
    with _lock:
        _edits.pop((user, chinese), None)
        if english.strip():
            _edits[(user, chinese)] = english.strip()
            while len(_edits) > CACHE_SIZE:
                _edits.popitem(last=False)


def _kinds() -> tuple[set[str], set[str]]:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    return set(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES), set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def list_translators(store) -> list[str]:
    """Folders under models/translators holding a transformers seq2seq or causal LM."""
    seq2seq, causal = _kinds()
    return [name for name in store.folders.list_diffusers_dirs("translators", "config.json")
            if model_type(store.folders.resolve("translators", name)) in seq2seq | causal]


def _load(store, name: str):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    folder = store.folders.resolve("translators", name)
    seq2seq, _ = _kinds()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        loader = AutoModelForSeq2SeqLM if model_type(folder) in seq2seq else AutoModelForCausalLM
        model = loader.from_pretrained(folder, local_files_only=True, dtype=store.plan.dtype)
    except Exception as exc:  # a broken folder is a sentence, never a crash
        log.exception("loading translator %s failed", name)
        raise ModelError("translator_load_failed", name=name) from exc
    return tokenizer, model.to(store.plan.device).eval()


def _generate(tokenizer, model, phrases: list[str]) -> list[str]:
    device = next(model.parameters()).device
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            batch = tokenizer(phrases, return_tensors="pt", padding=True, truncation=True, max_length=128).to(device)
            out = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
            return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
        answers = []
        for phrase in phrases:  # an instruct model: one chat turn per phrase
            messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": phrase}]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
            ids = (ids if isinstance(ids, torch.Tensor) else ids["input_ids"]).to(device)
            out = model.generate(ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
            answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().splitlines()[0:1])
        return [a[0] if a else "" for a in answers]


def edits_of(user: str) -> dict[str, str]:
    """The English ``user`` wrote for their Chinese prompts ({Chinese prompt: English}), sent
    with a job to a replica in another process."""
    with _lock:
        return {chinese: english for (who, chinese), english in _edits.items() if who == user}


def translate_texts(store, name: str, texts: list[str], user: str = "",
                    edits: dict[str, str] | None = None) -> list[str]:
    """Each text with its Chinese phrases in English (the syntax kept), translated by ``name``;
    the model is loaded only when some phrase is not cached, and freed before returning.
    ``edits``: the user's edits given with the job ({Chinese: English}) instead of those kept here."""
    with _lock:
        edited = ({t: edits[t] for t in texts if t in edits} if edits is not None
                  else {t: _edits[(user, t)] for t in texts if (user, t) in _edits})
    if all(t in edited or not has_chinese(t) for t in texts):
        return [edited.get(t, t) for t in texts]
    folder = store.folders.resolve("translators", name)
    stamp = (str(folder), (folder / "config.json").stat().st_mtime_ns)
    plans = [plan(t) for t in texts]
    wanted = list(dict.fromkeys(p for pl in plans for p in pl.phrases))
    with _lock:
        missing = [p for p in wanted if (stamp, p) not in _cache]
    if missing:
        started = time.perf_counter()
        tokenizer, model = _load(store, name)
        try:
            english = _generate(tokenizer, model, missing)
        finally:
            del model
            free_memory(store.plan.device)
        with _lock:
            for phrase, text in zip(missing, english):
                _cache[(stamp, phrase)] = text
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
        log.info("translated %d phrases with %s in %.2fs", len(missing), name, time.perf_counter() - started)
    with _lock:
        found = {p: _cache.get((stamp, p), "") for p in wanted}
    return [edited.get(t) or pl.assemble([found[p] for p in pl.phrases]) for t, pl in zip(texts, plans)]


def translate_captions(store, req):
    """A LoRA trained on a model that reads only English learns from English: its Chinese
    captions (and the sample prompt) put into English phrase by phrase — the same English a
    prompt with those words gets later, so a Chinese trigger word typed then means what was
    trained. (the request with English captions, the translator's name or None)."""
    sample = req.sample_prompt or req.trigger or req.captions[0]
    texts = [*req.captions, sample]
    if not any(has_chinese(t) for t in texts) or reads_chinese(store.base()):
        return req, None
    names = list_translators(store)
    if not names:
        raise ParamError("train_translator_missing", family=store.family.label, suggestion=SUGGESTED,
                         folder=str(store.folders.folder("translators")))
    english = translate_texts(store, names[0], texts)
    return replace(req, captions=tuple(english[:-1]), sample_prompt=english[-1]), names[0]


def translate_request(store, request, base_of, with_base, user: str = "", edits: dict[str, str] | None = None):
    """``request`` with its base's prompt and negative prompt in English when the loaded model
    does not read Chinese and they hold Chinese (and its ``translate`` switch is on): (request,
    notice or None). ``base_of(request)`` gives its Txt2Img, ``with_base(request, base)`` puts a
    new one in its place; ``edits`` as in translate_texts."""
    base = base_of(request)
    texts = [base.prompt, base.negative_prompt]
    if not any(has_chinese(t) for t in texts) or reads_chinese(store.base()):
        return request, None
    if not base.translate:
        return request, {"untranslated": True}
    names = list_translators(store)
    if not names:
        raise ParamError("translator_missing", family=store.family.label, suggestion=SUGGESTED,
                         folder=str(store.folders.folder("translators")))
    prompt, negative = translate_texts(store, names[0], texts, user, edits)
    with _lock:
        edited = base.prompt in edits if edits is not None else (user, base.prompt) in _edits
    notice = {"translator": names[0], "prompt": base.prompt, "negative_prompt": base.negative_prompt,
              "english_prompt": prompt, "english_negative_prompt": negative, "edited": edited}
    return with_base(request, replace(base, prompt=prompt, negative_prompt=negative)), notice
