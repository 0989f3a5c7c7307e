"""Parameter dataclasses shared by the UI, the API and the engine, with server-side validation.

Pure Python on purpose: the UI imports this module and must not pull in torch. Every value
that arrives from a browser or an API client goes through ``validate_*`` before any work,
because Gradio enforces slider bounds only in the browser.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, replace

from .errors import ParamError

# A1111 sampler names, in the order the UI lists them. pipelines/schedulers.py maps each to a
# diffusers scheduler; a test checks both lists agree.
SAMPLER_NAMES: tuple[str, ...] = (
    "DPM++ 2M Karras",
    "DPM++ 2M",
    "DPM++ 2M SDE Karras",
    "Euler a",
    "Euler",
    "Heun",
    "LMS",
    "DDIM",
    "PNDM",
    "UniPC",
    "LCM",
)
DEFAULT_SAMPLER = "DPM++ 2M Karras"

MAX_STEPS = 150
MAX_CFG = 30.0
MIN_SIDE = 64
MAX_SIDE = 2048
MAX_IMAGES = 8
# Pixels of one job (width * height * images): 4 images of 1024² on one GPU is the ceiling.
MAX_JOB_PIXELS = 4 * 1024 * 1024
MAX_PROMPT_CHARS = 4000
MAX_DEEPCACHE = 5
SEED_MAX = 2**32 - 1
MAX_LORAS = 8
MAX_LORA_WEIGHT = 4.0
MAX_LORA_NAME = 255
# A1111's extra-network tag: <lora:name> or <lora:name:weight>.
LORA_TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)


@dataclass(frozen=True)
class Txt2ImgParams:
    """One text-to-image request. Field names follow diffusers' pipeline arguments."""

    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int = 20
    guidance_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    num_images_per_prompt: int = 1
    sampler: str = DEFAULT_SAMPLER
    # (file name under models/lora, weight) pairs; empty = no LoRA.
    loras: tuple[tuple[str, float], ...] = ()
    # DeepCache-style approximation: refresh the deep U-Net features every N steps (0 = exact).
    deepcache: int = 0

    def with_seed(self, seed: int) -> "Txt2ImgParams":
        return replace(self, seed=seed)


def _as_int(name: str, value: object) -> int:
    """An integer from an int, an integral float or a numeric string; anything else is refused."""
    if isinstance(value, bool):
        raise ParamError("not_an_integer", name=name, value=str(value))
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ParamError("not_an_integer", name=name, value=str(value))
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ParamError("not_an_integer", name=name, value=value[:40]) from None
    raise ParamError("not_an_integer", name=name, value=type(value).__name__)


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ParamError("not_a_number", name=name, value=type(value).__name__)
    try:
        number = float(value)
    except ValueError:
        raise ParamError("not_a_number", name=name, value=str(value)[:40]) from None
    if not math.isfinite(number):
        raise ParamError("not_a_number", name=name, value=str(value)[:40])
    return number


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ParamError("out_of_range", name=name, value=value, low=low, high=high)


def _text(name: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ParamError("not_text", name=name)
    if len(value) > MAX_PROMPT_CHARS:
        raise ParamError("text_too_long", name=name, length=len(value), limit=MAX_PROMPT_CHARS)
    return value


def validate_size(width: object, height: object, images: int = 1) -> tuple[int, int]:
    w, h = _as_int("width", width), _as_int("height", height)
    for name, side in (("width", w), ("height", h)):
        _in_range(name, side, MIN_SIDE, MAX_SIDE)
    if w % 8 or h % 8:
        raise ParamError("size_not_multiple_of_8", width=w, height=h)
    if w * h * images > MAX_JOB_PIXELS:
        raise ParamError("job_too_large", width=w, height=h, images=images, limit=MAX_JOB_PIXELS)
    return w, h


def resolve_seed(seed: object) -> int:
    """-1 (or empty) picks a random seed; otherwise an integer in [0, 2³²−1]."""
    if seed is None or seed == "":
        return secrets.randbelow(SEED_MAX + 1)
    value = _as_int("seed", seed)
    if value == -1:
        return secrets.randbelow(SEED_MAX + 1)
    _in_range("seed", value, 0, SEED_MAX)
    return value


def parse_prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Take A1111's ``<lora:name:weight>`` tags out of a prompt.

    Returns the prompt without the tags (runs of spaces left behind are collapsed) and the
    (name, weight) pairs in the order they appear; the weight defaults to 1.0. The name may
    omit the file extension; it is resolved later, strictly inside models/lora. A tag with
    more fields (A1111's separate text-encoder/U-Net multipliers) is refused, not half-read.
    """
    found: list[tuple[str, float]] = []
    for match in LORA_TAG.finditer(prompt):
        fields = match.group(1).split(":")
        if len(fields) > 2:
            raise ParamError("bad_lora_tag", tag=match.group(0)[:80])
        name = fields[0].strip()
        weight = _lora_weight(fields[1].strip()) if len(fields) == 2 else 1.0
        found.append((_lora_name(name), weight))
    if not found:
        return prompt, []
    text = LORA_TAG.sub("", prompt)
    text = re.sub(r"[ \t]{2,}", " ", text).strip()
    return text, found


def _lora_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ParamError("bad_lora_list")
    if len(name) > MAX_LORA_NAME:
        raise ParamError("text_too_long", name="lora", length=len(name), limit=MAX_LORA_NAME)
    return name.strip()


def _lora_weight(value: object) -> float:
    weight = _as_float("lora_weight", value)
    _in_range("lora_weight", weight, -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT)
    return weight


def validate_loras(loras: object, from_prompt: list[tuple[str, float]] = ()) -> tuple[tuple[str, float], ...]:
    """[[name, weight], ...] from the UI/API, then the prompt's tags; a name given twice keeps
    its last weight (so a prompt tag overrides the list). At most ``MAX_LORAS``."""
    pairs: list[tuple[str, float]] = []
    if loras is not None:
        if not isinstance(loras, (list, tuple)):
            raise ParamError("bad_lora_list")
        for item in loras:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ParamError("bad_lora_list")
            pairs.append((_lora_name(item[0]), _lora_weight(item[1])))
    merged: dict[str, float] = {}
    for name, weight in (*pairs, *from_prompt):
        merged.pop(name, None)  # re-insert so the order follows the last mention
        merged[name] = weight
    if len(merged) > MAX_LORAS:
        raise ParamError("too_many_loras", count=len(merged), limit=MAX_LORAS)
    return tuple(merged.items())


def validate_txt2img(
    prompt: object,
    negative_prompt: object = "",
    num_inference_steps: object = 20,
    guidance_scale: object = 7.0,
    width: object = 512,
    height: object = 512,
    seed: object = -1,
    num_images_per_prompt: object = 1,
    sampler: object = DEFAULT_SAMPLER,
    loras: object = None,
    deepcache: object = 0,
) -> Txt2ImgParams:
    """Check raw request values and return a frozen parameter set with a concrete seed.

    ``<lora:name:weight>`` tags are taken out of the prompt and merged with ``loras``.
    """
    text = _text("prompt", prompt)
    if not text.strip():
        raise ParamError("empty_prompt")
    text, tagged = parse_prompt_loras(text)
    lora_pairs = validate_loras(loras, tagged)
    negative = _text("negative_prompt", negative_prompt)
    steps = _as_int("num_inference_steps", num_inference_steps)
    _in_range("num_inference_steps", steps, 1, MAX_STEPS)
    cfg = _as_float("guidance_scale", guidance_scale)
    _in_range("guidance_scale", cfg, 0.0, MAX_CFG)
    images = _as_int("num_images_per_prompt", num_images_per_prompt)
    _in_range("num_images_per_prompt", images, 1, MAX_IMAGES)
    w, h = validate_size(width, height, images)
    if sampler not in SAMPLER_NAMES:
        raise ParamError("unknown_sampler", value=str(sampler)[:60])
    cache = _as_int("deepcache", deepcache or 0)
    _in_range("deepcache", cache, 0, MAX_DEEPCACHE)
    return Txt2ImgParams(
        prompt=text,
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=cfg,
        width=w,
        height=h,
        seed=resolve_seed(seed),
        num_images_per_prompt=images,
        sampler=str(sampler),
        loras=lora_pairs,
        deepcache=0 if cache == 1 else cache,
    )
