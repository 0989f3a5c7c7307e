"""Captions for training pictures from a local image-to-text model in models/captioners/ (a
transformers folder, local files only, never downloaded, no remote code run).

Three kinds of model are asked the way each expects:
1. plain captioners (BLIP, Taiyi-BLIP in Chinese, GIT, BLIP-2, ViT-GPT2): the picture alone;
2. Florence-2: the picture with its task token (``<DETAILED_CAPTION>``);
3. chat models whose processor has a chat template (Qwen2-VL, Qwen2.5-VL, …): the picture and
   an instruction, in Chinese when the base model reads Chinese (PAI, Taiyi), else English.

The model is loaded for the job and freed after it (training comes next and wants the memory).
Chinese output from a WordPiece tokenizer ("一 只 猫") is joined back ("一只猫").
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from ..errors import ModelError, ParamError
from ..store.devices import free_memory
from ..formats.weights import model_type
from ..formats.images import open_upload

log = logging.getLogger(__name__)

FLORENCE_TASK = "<DETAILED_CAPTION>"
# What chat models are asked (per language) and the full stops taken off a caption's end: data,
# in configs/captions.json beside the single-file configs.
_CONFIG = json.loads((Path(__file__).parents[1] / "formats" / "configs" / "captions.json").read_text(encoding="utf-8"))
INSTRUCTION: dict[str, str] = _CONFIG["instruction"]
MAX_NEW_TOKENS = 60  # a caption fits SD's 77-token window
BATCH = 4
_CJK_GAP = re.compile(r"(?<=[\u2e80-\u9fff\uff00-\uffef\u3000-\u303f])\s+(?=[\u2e80-\u9fff\uff00-\uffef\u3000-\u303f])")


def _captioner_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES) | {"vision-encoder-decoder"}


def list_captioners(store) -> list[str]:
    """Folders under models/captioners holding a transformers image-to-text model."""
    kinds = _captioner_types()
    return [name for name in store.folders.list_diffusers_dirs("captioners", "config.json")
            if model_type(store.folders.resolve("captioners", name)) in kinds]


def _load(store, name: str, folder: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor, VisionEncoderDecoderModel

    kind = model_type(folder)
    if kind not in _captioner_types():
        raise ModelError("captioner_load_failed", name=name)
    try:
        # backend="pil": the processors' torchvision backend is not installed; the PIL one
        # computes the same resize and normalisation.
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
        loader = VisionEncoderDecoderModel if kind == "vision-encoder-decoder" else AutoModelForImageTextToText
        model = loader.from_pretrained(folder, local_files_only=True, dtype=store.plan.dtype)
    except Exception as exc:  # a broken folder is a user-facing error, never a crash
        log.exception("loading captioner %s failed", name)
        raise ModelError("captioner_load_failed", name=name) from exc
    model.to(store.plan.device).eval()
    log.info("loaded captioner %s (%s)", name, type(model).__name__)
    return kind, processor, model


def _inputs(kind: str, processor, images: list, language: str) -> tuple[dict, int]:
    """The processor's tensors for a batch, and how many prompt tokens precede the answer
    (decoder-only chat models echo their prompt)."""
    template = getattr(processor, "chat_template", None)
    if kind == "florence2":
        return processor(text=[FLORENCE_TASK] * len(images), images=images, return_tensors="pt"), 0
    if template:
        message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION[language]}]}]
        prompt = processor.apply_chat_template(message, add_generation_prompt=True)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # the answers start at the same column
        inputs = processor(text=[prompt] * len(images), images=images, return_tensors="pt", padding=True)
        return inputs, inputs["input_ids"].shape[1]
    return processor(images=images, return_tensors="pt"), 0


def tidy(text: str) -> str:
    """One line, Chinese characters joined back together, no trailing full stop."""
    text = " ".join(text.split())
    text = _CJK_GAP.sub("", text)
    return text.strip().rstrip(_CONFIG["strip_trailing"]).strip()


def caption_images(store, name: str, paths: list[str], language: str = "en", cancel=None,
                   on_progress=None) -> list[str]:
    """One caption per picture from the captioner ``name`` (a folder under models/captioners)."""
    try:
        folder = store.folders.resolve("captioners", name)
    except ParamError as exc:
        if exc.code != "unknown_model_name":
            raise
        raise ModelError("captioner_missing", name=name,
                         folder=str(store.folders.folder("captioners"))) from None
    kind, processor, model = _load(store, name, folder)
    captions: list[str] = []
    try:
        for start in range(0, len(paths), BATCH):
            if cancel is not None and cancel.is_set():
                break
            images = [open_upload(p).convert("RGB") for p in paths[start:start + BATCH]]
            inputs, prompt_tokens = _inputs(kind, processor, images, language)
            inputs = {k: (v.to(model.device, model.dtype) if v.is_floating_point() else v.to(model.device))
                      for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            with torch.no_grad():
                ids = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)
            texts = processor.batch_decode(ids[:, prompt_tokens:], skip_special_tokens=True)
            captions += [tidy(t.replace(FLORENCE_TASK, "")) for t in texts]
            if on_progress is not None:
                on_progress(len(captions), len(paths))
    finally:
        del model
        free_memory(store.plan.device)
    return captions
