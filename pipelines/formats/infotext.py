"""A job's A1111 ``parameters`` text: written from its request, read back into request fields.

One place for both directions, so saving (studio), the PNG-info paste and sending (ui/), 历史
(history.py) and the X/Y grid agree on every key. A request field says its own key once
(``requests.param(infotext=...)``): such a field is written when it differs from its
``omit`` value and read back by its type, with no code here naming it. The rest are A1111's
fields with a shape of their own: the size, the model and its hashes, the LoRA tags and hashes,
the hires fix group, the few-step schedule and eta, and the editing modes' fields.

Pure Python (no torch): the UI reads texts with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..requests import (DEFAULT_SCHEDULE, INPAINT_FILL_NAMES, LATENT_UPSCALER, LORA_TAG, SAMPLER_NAMES,
                        SCHEDULE_TYPES, Txt2Img, parse_prompt_loras)
from ..errors import DanqingError
from .pnginfo import format_parameters, parse_parameters

VERSION_KEY = "Version"
_FILLS = {name: fill for fill, name in INPAINT_FILL_NAMES.items()}  # A1111's name → ours


def declared(cls=Txt2Img) -> list:
    """The request fields that carry their own infotext key (``param(infotext=...)``)."""
    return [f for f in fields(cls) if f.metadata.get("infotext")]


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# 1. Writing ---------------------------------------------------------------------------------------
def fields_of(params: Txt2Img, *, model: str, model_hash: str | None = None, vae: str | None = None,
              vae_hash: str | None = None, mode_fields: dict | None = None, eta: float | None = None,
              ti_hashes: str = "", lora_tags: list[tuple[str, str, float]] = (),
              hires_pass: str | None = None, version: str = "") -> tuple[str, dict]:
    """(prompt text with its ``<lora:…>`` tags, the ordered fields without ``Seed``) of a job.
    ``mode_fields``: an editing mode's own (denoising strength, mask, outpaint); ``eta``: what
    the sampler stepped with (None: nothing to write); ``lora_tags``: (tag, short hash,
    weight); ``hires_pass``: the 高清修复 pass's upscaler when it ran."""
    out = {
        "Steps": params.num_inference_steps,
        "Sampler": params.sampler,
        "CFG scale": params.guidance_scale,
        "Size": f"{params.width}x{params.height}",
        "Model": model,
        **({"Model hash": model_hash} if model_hash else {}),
        **({"VAE hash": vae_hash} if vae_hash else {}),
        **({"VAE": vae} if vae else {}),
        **({"DeepCache interval": params.deepcache} if params.deepcache else {}),
        **(mode_fields or {}),
        VERSION_KEY: version,
    }
    if params.clip_skip > 1:
        out["Clip skip"] = params.clip_skip
    if params.schedule_type != DEFAULT_SCHEDULE:  # A1111 1.9's field
        out["Schedule type"] = params.schedule_type
    if eta is not None:  # what the sampler stepped with (TCD's gamma)
        out["Eta"] = f"{eta:g}"
    for f in declared(type(params)):  # fields that say their key themselves
        value = getattr(params, f.name)
        if value != f.metadata.get("omit"):
            out[f.metadata["infotext"]] = _shown(value)
    if ti_hashes:  # A1111's "TI hashes": each embedding named in the prompts, by its file's hash
        out["TI hashes"] = ti_hashes
    prompt = params.prompt
    if lora_tags:
        # A1111 keeps the tags in the prompt text and lists short hashes: readers show them,
        # and sending the text back to the form re-selects the same LoRAs.
        prompt += " " + " ".join(f"<lora:{tag}:{weight:g}>" for tag, _, weight in lora_tags)
        out["Lora hashes"] = ", ".join(f"{tag}: {digest}" for tag, digest, _ in lora_tags)
    if hires_pass is not None:  # A1111's hires fix fields (the size is the first pass's)
        out.update({
            "Denoising strength": params.hires_strength,
            "Hires upscale": f"{params.hires_scale:g}",
            **({"Hires steps": params.hires_steps} if params.hires_steps else {}),
            "Hires upscaler": "Latent" if hires_pass == LATENT_UPSCALER else hires_pass,
        })
    out[VERSION_KEY] = out.pop(VERSION_KEY)  # last, as A1111 writes it
    return prompt, out


def write(prompt: str, negative: str, fields_: dict, seed: int, **more) -> str:
    """One picture's text: the job's fields with its own seed (and any field it changes)."""
    return format_parameters(prompt, negative, {**fields_, "Seed": seed, **more})


# 2. Reading -------------------------------------------------------------------------------------
@dataclass
class Read:
    """A text read back: the prompt (its ``<lora:…>`` tags taken out), the LoRAs they named,
    request field values found (by field name), an editing mode's settings (by the edit
    endpoints' names), the mode the text came from, and A1111's raw fields."""

    prompt: str
    negative_prompt: str
    loras: list[tuple[str, float]]
    values: dict = field(default_factory=dict)
    edit: dict = field(default_factory=dict)
    mode: str = "txt2img"
    raw: dict = field(default_factory=dict)


def _number(text, kind=float):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    if kind is int:
        return int(value) if value == int(value) else None
    return value


def mode_of(raw: dict) -> str:
    """The 创作 mode an A1111 field set came from: outpaint, inpaint, img2img or txt2img (a
    hires-fixed image is text to image)."""
    if "Outpaint" in raw:
        return "outpaint"
    if "Mask blur" in raw or "Inpaint area" in raw:
        return "inpaint"
    if "Denoising strength" in raw and "Hires upscale" not in raw:
        return "img2img"
    return "txt2img"


def read(text: str) -> Read:
    parsed = parse_parameters(text or "")
    raw = parsed["fields"]
    try:
        prompt, loras = parse_prompt_loras(parsed["prompt"])
    except DanqingError:
        prompt, loras = parsed["prompt"], []
    values: dict = {}
    for name, key, kind in (("num_inference_steps", "Steps", int), ("guidance_scale", "CFG scale", float),
                            ("seed", "Seed", int), ("clip_skip", "Clip skip", int), ("eta", "Eta", float)):
        number = _number(raw.get(key), kind)
        if number is not None:
            values[name] = number
    if "Clip skip" not in raw and raw:
        values["clip_skip"] = 1
    try:
        width, height = (int(v) for v in raw.get("Size", "").split("x"))
        values["width"], values["height"] = width, height
    except ValueError:
        pass
    if raw.get("Sampler") in SAMPLER_NAMES:
        values["sampler"] = raw["Sampler"]
    if raw:
        schedule = raw.get("Schedule type")
        values["schedule_type"] = schedule if schedule in SCHEDULE_TYPES else DEFAULT_SCHEDULE
    for f in declared():  # fields that say their key themselves, read by their type
        if f.metadata["infotext"] in raw:
            kind = int if f.type in (int, "int") else float if f.type in (float, "float") else str
            value = _number(raw[f.metadata["infotext"]], kind) if kind is not str else raw[f.metadata["infotext"]]
            if f.type in (bool, "bool"):
                value = str(value).strip().lower() in ("true", "1", "yes")
            if value is not None:
                values[f.name] = value
        elif raw and "omit" in f.metadata:
            values[f.name] = f.metadata["omit"]
    # 高清修复: A1111's hires fix group.
    if "Hires upscale" in raw and "Denoising strength" in raw:
        named = raw.get("Hires upscaler", "")
        values.update(hires_pass=True, hires_upscaler=LATENT_UPSCALER if named.lower().startswith("latent") else named)
        for name, key, kind in (("hires_scale", "Hires upscale", float), ("hires_strength", "Denoising strength", float),
                                ("hires_steps", "Hires steps", int)):
            number = _number(raw.get(key, 0 if key == "Hires steps" else None), kind)
            if number is not None:
                values[name] = number
    elif raw:
        values["hires_pass"] = False
    mode = mode_of(raw)
    edit: dict = {}
    if mode != "txt2img":
        strength = _number(raw.get("Denoising strength"))
        if strength is not None:
            edit["denoising_strength"] = strength
        blur = _number(raw.get("Mask blur"), int)
        if blur is not None:
            edit["mask_blur"] = blur
        if raw.get("Masked content") in _FILLS:
            edit["inpainting_fill"] = _FILLS[raw["Masked content"]]
        area = {"Only masked": True, "Whole picture": False}.get(raw.get("Inpaint area", ""))
        if area is not None:
            edit["inpaint_full_res"] = area
    return Read(prompt=prompt, negative_prompt=parsed["negative_prompt"], loras=loras, values=values, edit=edit,
                mode=mode, raw=raw)


def lora_names(text: str) -> list[str]:
    """The LoRAs a text names (its tags and ``Lora hashes``), for 历史's search."""
    parsed = parse_parameters(text or "")
    names = [n.split(":")[0].strip() for n in parsed["fields"].get("Lora hashes", "").strip('"').split(",")
             if n.strip()]
    names += [m.group(1).split(":")[0] for m in LORA_TAG.finditer(parsed["prompt"])]
    return list(dict.fromkeys(n for n in names if n))

