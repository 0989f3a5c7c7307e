"""One frozen, validated request per task: the single contract between callers and the engine.

The UI, the Gradio API, the A1111 API and extensions all build these from a mapping of named
fields (``Txt2Img.from_fields({...})``); each is validated once, here, and the engine trusts
what it gets. Field names follow diffusers' pipeline arguments, and their order is the order of
the Gradio API's parameters (``ui/binding.py`` builds the endpoints from it).

Pure Python on purpose: the UI imports this module and must not pull in torch. Every value
from a browser or an API client is checked here before any work, because Gradio enforces
slider bounds only in the browser.
"""

from __future__ import annotations

import math
import re
import secrets
import uuid
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from .errors import ParamError

# 0. Who asks ------------------------------------------------------------------------------------
# Where the HTTP layer (api/queue_guard.py) puts the id of a direct API call (one without a
# page session) in the request's state: the call's stop switch, pulled when its caller hangs up.
CALL_KEY = "danqing_call"


@dataclass(frozen=True)
class Caller:
    """Who a job is for. ``client`` keys its stop switch (a page session, one API request),
    ``user`` owns its saved images ("" without --auth), ``address`` is where it came from: waiting
    jobs take turns by address."""

    client: str = "local"
    user: str = ""
    address: str = "local"

    @classmethod
    def of_event(cls, request) -> "Caller":
        """The caller of a Gradio event (duck-typed gr.Request: no Gradio import here): its page
        session keys the stop switch (a direct API call without one gets a key of its own, so
        nobody else's 停止 reaches it, only its own hanging up), its login name, its address."""
        state = getattr(getattr(request, "request", None), "state", None)
        call = getattr(state, CALL_KEY, None)  # a direct call's id, given by the HTTP layer
        client = getattr(request, "session_hash", None) or call or f"call-{uuid.uuid4().hex[:12]}"
        address = getattr(getattr(request, "client", None), "host", None) or "local"
        return cls(client=client, user=getattr(request, "username", None) or "", address=address)



# The kinds a job is recorded as (the queue, 用量, the journal of open jobs), and the tasks 历史
# tells apart: stable names, said once here (strings.py words each; the task functions are
# registered under them in tasks/registry.py).
JOB_KINDS: tuple[str, ...] = ("txt2img", "controlnet", "img2img", "inpaint", "outpaint", "upscale", "train",
                              "caption", "depth", "extras", "expand")
HISTORY_TASKS: tuple[str, ...] = ("txt2img", "img2img", "inpaint", "outpaint", "controlnet", "upscale")


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
    "TCD",
)
DEFAULT_SAMPLER = "DPM++ 2M Karras"
# A1111 1.9's schedule types that change what runs here: the sampler's own spacing
# ("Automatic"), Karras sigmas, or the trailing timesteps few-step models want ("SGM Uniform").
SCHEDULE_TYPES: tuple[str, ...] = ("Automatic", "Karras", "SGM Uniform")
DEFAULT_SCHEDULE = "Automatic"

MAX_STEPS = 150
MAX_CFG = 30.0
MIN_SIDE = 64
MAX_SIDE = 2048
MAX_IMAGES = 8
# Pixels of one job (width * height * images): 4 images of 1024² on one GPU is the ceiling.
MAX_JOB_PIXELS = 4 * 1024 * 1024
# What a job may write, whatever route it came by: a saved picture's side (an upscale of a
# 2048² picture ×4), and the pixels of every picture one request saves (upscaled twins, an
# inpainting at the source's own size and the A1111 API's n_iter included).
MAX_OUTPUT_SIDE = 8192
MAX_REQUEST_PIXELS = 4 * 4096 * 4096
DRAFT_SIDE = 256  # Rapid Diffusion's draft: the short side at 256, then x4 with ESRGAN


def draft_size(width: int, height: int, side: int = DRAFT_SIDE) -> tuple[int, int]:
    """The draft's size: short side 256 (the model family's draft side: SDXL's is 512), the
    requested aspect ratio, multiples of 8."""
    short = min(width, height)
    return (max(8, round(width * side / short / 8) * 8), max(8, round(height * side / short / 8) * 8))


def check_output(width: int, height: int, pixels: int) -> None:
    """A saved picture of ``width`` × ``height`` within the side limit, and a request's
    ``pixels`` in all within the budget; refused before any work."""
    if max(width, height) > MAX_OUTPUT_SIDE:
        raise ParamError("output_too_large", width=width, height=height, limit=MAX_OUTPUT_SIDE)
    if pixels > MAX_REQUEST_PIXELS:
        raise ParamError("request_too_large", megapixels=round(pixels / 1e6, 1),
                         limit=round(MAX_REQUEST_PIXELS / 1e6, 1))
MAX_PROMPT_CHARS = 4000
MAX_DEEPCACHE = 5
SEED_MAX = 2**32 - 1
MAX_LORAS = 8
MAX_LORA_WEIGHT = 4.0
MAX_LORA_NAME = 255
# A1111's extra-network tag: <lora:name> or <lora:name:weight>.
LORA_TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)


def as_int(name: str, value: object) -> int:
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


def as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ParamError("not_a_number", name=name, value=type(value).__name__)
    try:
        number = float(value)
    except ValueError:
        raise ParamError("not_a_number", name=name, value=str(value)[:40]) from None
    if not math.isfinite(number):
        raise ParamError("not_a_number", name=name, value=str(value)[:40])
    return number


def in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ParamError("out_of_range", name=name, value=value, low=low, high=high)


def text_field(name: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ParamError("not_text", name=name)
    if len(value) > MAX_PROMPT_CHARS:
        raise ParamError("text_too_long", name=name, length=len(value), limit=MAX_PROMPT_CHARS)
    return value


def validate_size(width: object, height: object, images: int = 1) -> tuple[int, int]:
    w, h = as_int("width", width), as_int("height", height)
    for name, side in (("width", w), ("height", h)):
        in_range(name, side, MIN_SIDE, MAX_SIDE)
    if w % 8 or h % 8:
        raise ParamError("size_not_multiple_of_8", width=w, height=h)
    if w * h * images > MAX_JOB_PIXELS:
        raise ParamError("job_too_large", width=w, height=h, images=images, limit=MAX_JOB_PIXELS)
    return w, h


def resolve_seed(seed: object) -> int:
    """-1 (or empty) picks a random seed; otherwise an integer in [0, 2³²−1]."""
    if seed is None or seed == "":
        return secrets.randbelow(SEED_MAX + 1)
    value = as_int("seed", seed)
    if value == -1:
        return secrets.randbelow(SEED_MAX + 1)
    in_range("seed", value, 0, SEED_MAX)
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
        parts = match.group(1).split(":")
        if len(parts) > 2:
            raise ParamError("bad_lora_tag", tag=match.group(0)[:80])
        name = parts[0].strip()
        weight = _lora_weight(parts[1].strip()) if len(parts) == 2 else 1.0
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
    weight = as_float("lora_weight", value)
    in_range("lora_weight", weight, -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT)
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


def param(default: Any, *, infotext: str, a1111: str | None = None, low: float | None = None,
          high: float | None = None, step: float | None = None, omit: Any = None, label: str = "",
          info: str = "") -> Any:
    """A request field that says everything about itself once: its A1111 infotext key (written
    unless the value is ``omit``, read back by its type: formats/infotext.py), its A1111 API name,
    its range (checked here, the UI's control built from it), its strings' keys (``label``,
    ``info`` in strings.py). Such a field needs no code of its own anywhere but the task that
    uses it."""
    metadata = {"infotext": infotext, "a1111": a1111 or "", "range": (low, high), "step": step, "omit": omit,
                "label": label, "info": info}
    return field(default=default, metadata=metadata)


def declared_fields(cls) -> list:
    """The fields of ``cls`` made with ``param``, in order."""
    return [f for f in fields(cls) if f.metadata.get("infotext")]


def _declared_values(cls, raw: Mapping) -> dict:
    """The ``param`` fields' values of ``raw``, each checked by its type and range."""
    values = {}
    for f in declared_fields(cls):
        value = raw.get(f.name)
        if value is None or value == "":
            values[f.name] = f.default
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind == "bool":
            values[f.name] = bool(value)
            continue
        number = as_int(f.name, value) if kind == "int" else as_float(f.name, value)
        low, high = f.metadata["range"]
        in_range(f.name, number, low if low is not None else -math.inf, high if high is not None else math.inf)
        values[f.name] = number
    return values


def _raw(cls, mapping: Mapping | None, more: dict) -> dict:
    """The raw values of a ``from_fields`` call (a mapping and/or keywords); a name that is not
    a field of ``cls`` is a caller's mistake, not a user's."""
    raw = {**(mapping or {}), **more}
    unknown = sorted(set(raw) - {f.name for f in fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    return raw


# 1. Text to image --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Txt2Img:
    """One text-to-image request (also the base of every other generation request).

    ``hires_upscaler``: upscale every image by ``hires_scale`` with that ESRGAN file before
    saving (the original is kept too). ``draft``: generate with the short side at 256 and
    upscale x4 (Rapid Diffusion); without an upscaler the first listed one is used.

    ``hires_pass``: A1111's 高清修复 instead of the plain post-step: upscale by ``hires_scale``
    (an ESRGAN file, or ``"latent"``: the latents themselves), then denoise again at
    ``hires_strength`` for ``hires_steps`` steps (0: as many as the first pass) on the same seed.
    Only the refined image is saved. With ``draft`` it refines the draft's x4 image.
    """

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
    hires_upscaler: str | None = None
    hires_scale: float = 2  # 2 or 4 for the post-step; 1 to 4 for the hires pass
    # DeepCache-style approximation: refresh the deep U-Net features every N steps (0 = exact).
    deepcache: int = 0
    draft: bool = False
    hires_pass: bool = False
    hires_strength: float = 0.4
    hires_steps: int = 0
    # A1111's CLIP_stop_at_last_layers: 1 = the text encoder's last layer, 2 = the one before, ...
    clip_skip: int = 1
    # The timestep schedule (SCHEDULE_TYPES) and the sampler's eta (TCD's gamma, DDIM's eta;
    # None: the sampler's own default).
    schedule_type: str = DEFAULT_SCHEDULE
    eta: float | None = None
    # Fields that say everything about themselves (``param``); new parameters go here, at the
    # end (the Gradio API's positional order only grows at its end).
    # CFG rescale (Lin et al., "Common Diffusion Noise Schedules…"): the guided prediction's
    # spread pulled back toward the text-conditioned one's; 0.7 for v-prediction / zero-SNR models.
    guidance_rescale: float = param(0.0, infotext="CFG Rescale", a1111="guidance_rescale", low=0.0, high=1.0,
                                    step=0.05, omit=0.0, label="guidance_rescale_label", info="guidance_rescale_info")
    # Chinese prompts on a model that reads only English go through a local translator (tasks/translate.py)
    translate: bool = param(True, infotext="Danqing translate", a1111="danqing_translate", omit=True,
                            label="translate_label", info="translate_info")
    # 提示词扩写 at run time (tasks/expand.py); the saved text says the prompter's name, which reads
    # back as off: the saved prompt already holds the words it added
    expand: bool = param(False, infotext="Prompt expansion", a1111="danqing_expand", omit=False,
                         label="expand_label", info="expand_info")

    @classmethod
    def from_fields(cls, mapping: Mapping | None = None, /, **more: Any) -> "Txt2Img":
        """Check raw values (a mapping and/or keywords) and return a request with a concrete
        seed. ``<lora:name:weight>`` tags are taken out of the prompt and merged with ``loras``."""
        raw = _raw(cls, mapping, more)
        text = text_field("prompt", raw.get("prompt"))
        if not text.strip():
            raise ParamError("empty_prompt")
        text, tagged = parse_prompt_loras(text)
        lora_pairs = validate_loras(raw.get("loras"), tagged)
        negative = text_field("negative_prompt", raw.get("negative_prompt", ""))
        steps = as_int("num_inference_steps", raw.get("num_inference_steps", 20))
        in_range("num_inference_steps", steps, 1, MAX_STEPS)
        cfg = as_float("guidance_scale", raw.get("guidance_scale", 7.0))
        in_range("guidance_scale", cfg, 0.0, MAX_CFG)
        images = as_int("num_images_per_prompt", raw.get("num_images_per_prompt", 1))
        in_range("num_images_per_prompt", images, 1, MAX_IMAGES)
        w, h = validate_size(raw.get("width", 512), raw.get("height", 512), images)
        sampler = raw.get("sampler", DEFAULT_SAMPLER)
        if sampler not in SAMPLER_NAMES:
            raise ParamError("unknown_sampler", value=str(sampler)[:60])
        cache = as_int("deepcache", raw.get("deepcache") or 0)
        in_range("deepcache", cache, 0, MAX_DEEPCACHE)
        draft = bool(raw.get("draft", False))
        upscaler = raw.get("hires_upscaler") or None
        scale = 4 if draft else 2
        hires_pass = bool(raw.get("hires_pass", False))
        strength = as_float("hires_strength", raw.get("hires_strength", 0.4))
        in_range("hires_strength", strength, 0.0, 1.0)
        hires_steps = as_int("hires_steps", raw.get("hires_steps") or 0)
        in_range("hires_steps", hires_steps, 0, MAX_STEPS)
        clip_skip = as_int("clip_skip", raw.get("clip_skip") or 1)
        in_range("clip_skip", clip_skip, 1, MAX_CLIP_SKIP)
        schedule = raw.get("schedule_type") or DEFAULT_SCHEDULE
        if schedule not in SCHEDULE_TYPES:
            raise ParamError("unknown_schedule", value=str(schedule)[:60])
        eta = raw.get("eta")
        if eta is not None and eta != "":
            eta = as_float("eta", eta)
            in_range("eta", eta, 0.0, 1.0)
        else:
            eta = None
        if hires_pass and not draft:
            upscaler = upscaler or LATENT_UPSCALER
            scale = as_float("hires_scale", raw.get("hires_scale", 2))
            in_range("hires_scale", scale, 1.0, MAX_HIRES_SCALE)
            validate_size(hires_side(w, scale), hires_side(h, scale), images)
        elif upscaler == LATENT_UPSCALER:
            raise ParamError("latent_needs_hires_pass")
        elif upscaler is not None:
            scale = Upscale.from_fields(upscaler=upscaler, scale=scale if draft else raw.get("hires_scale", 2)).scale
        if draft:
            # The draft's real size (short side 256) is what the U-Net makes: checked like any
            # size (2048×64 would make 8192×256), then its ×4 upscale as a saved picture.
            dw, dh = draft_size(w, h)
            try:
                validate_size(dw, dh, images)
                if hires_pass:
                    validate_size(hires_side(dw, 4), hires_side(dh, 4), images)
            except ParamError:
                raise ParamError("draft_too_large", width=dw, height=dh, limit=MAX_SIDE) from None
        request = cls(
            prompt=text,
            negative_prompt=negative,
            num_inference_steps=steps,
            guidance_scale=cfg,
            width=w,
            height=h,
            seed=resolve_seed(raw.get("seed", -1)),
            num_images_per_prompt=images,
            sampler=str(sampler),
            loras=lora_pairs,
            hires_upscaler=upscaler,
            hires_scale=scale,
            deepcache=0 if cache == 1 else cache,
            draft=draft,
            hires_pass=hires_pass,
            hires_strength=strength,
            hires_steps=hires_steps,
            clip_skip=clip_skip,
            schedule_type=str(schedule),
            eta=eta,
            **_declared_values(cls, raw),
        )
        request.check_outputs()
        return request

    def made_size(self) -> tuple[int, int]:
        """The size the U-Net makes first (a draft's own, short side 256)."""
        return draft_size(self.width, self.height) if self.draft else (self.width, self.height)

    def saved_sizes(self) -> list[tuple[int, int]]:
        """The size of every picture the job saves, per image: the picture, and its upscaled twin
        (the post-step, the draft's ×4), or only the refined one (高清修复)."""
        w, h = self.made_size()
        if self.hires_pass:
            scale = 4 if self.draft else self.hires_scale
            return [(hires_side(w, scale), hires_side(h, scale))]
        sizes = [(w, h)]
        if self.hires_upscaler or self.draft:
            scale = 4 if self.draft else int(self.hires_scale)
            sizes.append((w * scale, h * scale))
        return sizes

    def output_pixels(self) -> int:
        """Pixels of every picture the job saves (its budget, counted before it starts)."""
        return self.num_images_per_prompt * sum(w * h for w, h in self.saved_sizes())

    def check_outputs(self, repeats: int = 1) -> None:
        """The saved pictures within the side limit and, ``repeats`` times over (the A1111 API's
        n_iter), within one request's pixel budget."""
        for w, h in self.saved_sizes():
            check_output(w, h, 0)
        check_output(0, 0, self.output_pixels() * repeats)

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images_per_prompt)]

    def hires_size(self) -> tuple[int, int]:
        """The size after the hires pass's upscale (multiples of 8)."""
        return hires_side(self.width, self.hires_scale), hires_side(self.height, self.hires_scale)


MAX_CLIP_SKIP = 12  # A1111's slider
LATENT_UPSCALER = "latent"  # the hires pass upscales the latents themselves (A1111's "Latent")
MAX_HIRES_SCALE = 4.0


def hires_side(side: int, scale: float) -> int:
    return max(8, int(round(side * scale / 8)) * 8)


# 2. ControlNet ---------------------------------------------------------------------------------
MAX_UNITS = 3
MAX_WEIGHT = 2.0
CONTROL_KINDS = ("canny", "depth")
RESIZE_MODES: tuple[str, ...] = ("crop", "fit", "stretch")


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet, its image and how the image becomes a control map.

    ``image``: an upload (path, bytes or PIL image; decoded by the task, one at a time, after
    every count and name is checked). ``is_map``: the image already is the control map;
    otherwise ``kind`` says which annotator makes it (Canny thresholds, depth estimator).
    """

    model: str  # a name from the ControlNet list
    image: Any
    weight: float = 1.0  # diffusers' controlnet_conditioning_scale
    guidance_start: float = 0.0  # fraction of the steps where the guidance starts
    guidance_end: float = 1.0
    kind: str = "canny"
    is_map: bool = True
    low_threshold: int = 100
    high_threshold: int = 200
    estimator: str = ""

    @classmethod
    def from_fields(cls, mapping: Mapping | None = None, /, **more: Any) -> "ControlUnit":
        """A unit from raw values (the UI's and the APIs' names). The image and how it becomes
        a map are checked here; the ControlNet and its weights when the unit is used in a
        ``Control`` request (a map preview needs no ControlNet)."""
        raw = _raw(cls, mapping, more)
        if raw.get("image") is None or (isinstance(raw.get("image"), str) and not raw["image"]):
            raise ParamError("control_image_missing")
        kind = raw.get("kind", "canny")
        if kind not in CONTROL_KINDS:
            raise ParamError("unknown_control_kind", value=str(kind)[:20])
        model = raw.get("model")
        unit = cls(model=model if isinstance(model, str) else "", image=raw["image"], kind=kind,
                   is_map=bool(raw.get("is_map", False)), estimator=str(raw.get("estimator") or ""),
                   **{k: raw[k] for k in ("weight", "guidance_start", "guidance_end") if raw.get(k) is not None},
                   **{k: as_int(k, raw[k]) for k in ("low_threshold", "high_threshold") if raw.get(k) is not None})
        return unit


def _check_unit(unit: ControlUnit) -> ControlUnit:
    if not isinstance(unit, ControlUnit) or not isinstance(unit.model, str) or not unit.model:
        raise ParamError("controlnet_no_model")
    if unit.image is None:
        raise ParamError("controlnet_no_image", model=unit.model[:80])
    weight = as_float("controlnet_weight", unit.weight)
    in_range("controlnet_weight", weight, 0.0, MAX_WEIGHT)
    start = as_float("guidance_start", unit.guidance_start)
    end = as_float("guidance_end", unit.guidance_end)
    in_range("guidance_start", start, 0.0, 1.0)
    in_range("guidance_end", end, 0.0, 1.0)
    if start >= end:
        raise ParamError("controlnet_guidance_order", start=start, end=end)
    return replace(unit, weight=weight, guidance_start=start, guidance_end=end)


def validate_units(units, resize_mode: str = "crop") -> tuple[ControlUnit, ...]:
    """Server-side checks of the ControlNet units; returns them with plain float fields."""
    if resize_mode not in RESIZE_MODES:
        raise ParamError("unknown_resize_mode", value=str(resize_mode)[:40])
    units = tuple(units or ())
    if not units:
        raise ParamError("controlnet_no_units")
    if len(units) > MAX_UNITS:
        raise ParamError("controlnet_too_many_units", count=len(units), limit=MAX_UNITS)
    return tuple(_check_unit(unit) for unit in units)


@dataclass(frozen=True)
class Control:
    """Text to image guided by one to three ControlNet units."""

    base: Txt2Img
    units: tuple[ControlUnit, ...]
    resize_mode: str = "crop"  # how maps are fitted to the output size: crop | fit | stretch

    @classmethod
    def build(cls, base: Txt2Img, units, resize_mode: str = "crop") -> "Control":
        """The checked request: ``base`` is a Txt2Img, ``units`` ControlUnits (or their raw
        mappings); counts and values are checked here, before any image is decoded."""
        units = tuple(units or ())
        if not units:  # the user gave no control image at all
            raise ParamError("control_image_missing")
        built = [u if isinstance(u, ControlUnit) else ControlUnit.from_fields(u) for u in units]
        return cls(base=base, units=validate_units(built, resize_mode), resize_mode=resize_mode)


# 3. Upscaling ------------------------------------------------------------------------------------
SCALES = (2, 4)
MAX_UPSCALE_IMAGES = 16  # pictures one upscale request takes (the same one listed twice counts twice)
MIN_TILE = 32  # the OOM fallback stops halving here
MAX_TILE = 2048
MAX_TILE_OVERLAP = 128


@dataclass(frozen=True)
class Upscale:
    """One upscale: an ESRGAN file, the factor and the tiling."""

    upscaler: str  # file name under models/upscalers
    scale: int = 4
    tile: int = 192  # tile side in input pixels; 0 = the whole image at once
    tile_overlap: int = 16  # padding each tile borrows from its neighbours, in input pixels

    @classmethod
    def from_fields(cls, mapping: Mapping | None = None, /, **more: Any) -> "Upscale":
        raw = _raw(cls, mapping, more)
        upscaler = raw.get("upscaler")
        if not isinstance(upscaler, str) or not upscaler:
            raise ParamError("bad_model_name", kind="upscalers")
        factor = as_int("scale", raw.get("scale", 4))
        if factor not in SCALES:
            raise ParamError("bad_upscale_scale", value=factor, allowed="/".join(map(str, SCALES)))
        side = as_int("tile", raw.get("tile", 192))
        if side != 0 and not MIN_TILE <= side <= MAX_TILE:
            raise ParamError("bad_tile_size", value=side, low=MIN_TILE, high=MAX_TILE)
        overlap = as_int("tile_overlap", raw.get("tile_overlap", 16))
        in_range("tile_overlap", overlap, 0, MAX_TILE_OVERLAP)
        return cls(upscaler=upscaler, scale=factor, tile=side, tile_overlap=overlap)


# 4. Editing: img2img, inpainting, outpainting --------------------------------------------------
INPAINT_FILLS = ("original", "fill", "latent_noise", "latent_nothing")
# A1111's names of each in the saved parameters ("Masked content").
INPAINT_FILL_NAMES = {"original": "original", "fill": "fill", "latent_noise": "latent noise",
                      "latent_nothing": "latent nothing"}
MAX_MASK_BLUR = 64
MAX_CROP_PADDING = 256
MAX_OUTPAINT = 1024  # pixels added on one side


def image_given(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


@dataclass(frozen=True)
class Img2Img:
    """Image to image: ``image`` (an upload: path, bytes or PIL image, decoded by the task)
    fitted to the base's size by ``resize_mode`` and denoised from ``strength`` (0: the image
    back through the VAE, no U-Net step; 1: from pure noise). ``units``: ControlNets guiding
    it (Canny + img2img is how line art gets coloured). ``save_inputs`` saves the input (and
    an inpainting mask) beside the results."""

    base: Txt2Img
    image: Any
    strength: float = 0.75
    resize_mode: str = "crop"
    units: tuple[ControlUnit, ...] = ()
    save_inputs: bool = False

    @classmethod
    def build(cls, base: Txt2Img, image: Any, strength: object = 0.75, resize_mode: str = "crop",
              units=(), save_inputs: bool = False) -> "Img2Img":
        if not image_given(image):
            raise ParamError("edit_image_missing")
        value = as_float("denoising_strength", strength)
        in_range("denoising_strength", value, 0.0, 1.0)
        if resize_mode not in RESIZE_MODES:
            raise ParamError("unknown_resize_mode", value=str(resize_mode)[:40])
        if base.hires_pass or base.draft:
            raise ParamError("edit_no_hires_pass")
        units = tuple(units or ())
        if units:
            built = [u if isinstance(u, ControlUnit) else ControlUnit.from_fields(u) for u in units]
            units = validate_units(built, resize_mode)
        return cls(base=base, image=image, strength=value, resize_mode=resize_mode, units=units,
                   save_inputs=bool(save_inputs))

    def denoise_steps(self) -> int:
        """U-Net steps this request runs: ``steps × strength``, at least one unless the strength is 0."""
        return denoise_steps(self.base.num_inference_steps, self.strength)


def schedule(steps: int, strength: float) -> tuple[int, int]:
    """(the schedule's length, the U-Net steps that run) of a pass from ``strength``: diffusers
    runs ``int(steps × strength)`` of ``steps``; when that is below one (but the strength is
    not 0) the schedule is lengthened until exactly one step runs, the noise level the
    strength asks for."""
    if strength <= 0:
        return steps, 0
    length = steps
    while int(length * strength) < 1:
        length += 1
    return length, min(int(length * strength), length)


def denoise_steps(steps: int, strength: float) -> int:
    return schedule(steps, strength)[1]


@dataclass(frozen=True)
class Inpaint:
    """局部重绘: repaint where ``mask`` is white (an upload, or the strokes painted in the
    browser), keep every other pixel. ``fill``: what the masked area starts from (A1111's
    "Masked content"); ``full_res``: work only on the mask's box plus ``padding`` pixels, at
    the base's width × height, then paste it back; otherwise the whole picture is worked at its
    own size. ``mask_blur`` softens the edge (pixels beyond the blur are the input's own)."""

    edit: Img2Img
    mask: Any
    mask_blur: int = 4
    fill: str = "original"
    full_res: bool = False
    padding: int = 32
    invert: bool = False

    @classmethod
    def build(cls, edit: Img2Img, mask: Any, mask_blur: object = 4, fill: str = "original",
              full_res: object = False, padding: object = 32, invert: object = False) -> "Inpaint":
        if not image_given(mask):
            raise ParamError("mask_missing")
        blur = as_int("mask_blur", mask_blur)
        in_range("mask_blur", blur, 0, MAX_MASK_BLUR)
        if fill not in INPAINT_FILLS:
            raise ParamError("unknown_inpaint_fill", value=str(fill)[:40])
        pad = as_int("inpaint_full_res_padding", padding)
        in_range("inpaint_full_res_padding", pad, 0, MAX_CROP_PADDING)
        return cls(edit=edit, mask=mask, mask_blur=blur, fill=fill, full_res=bool(full_res), padding=pad,
                   invert=bool(invert))


@dataclass(frozen=True)
class Outpaint:
    """扩图: extend the canvas by ``left``/``right``/``up``/``down`` pixels and fill the new area
    so it continues the picture (inpainting of the extension; the original pixels are kept)."""

    edit: Img2Img
    left: int = 0
    right: int = 0
    up: int = 0
    down: int = 0
    fill: str = "fill"

    @classmethod
    def build(cls, edit: Img2Img, left: object = 0, right: object = 0, up: object = 0, down: object = 0,
              fill: str = "fill") -> "Outpaint":
        sides = {}
        for name, value in (("left", left), ("right", right), ("up", up), ("down", down)):
            sides[name] = as_int(name, value or 0)
            in_range(name, sides[name], 0, MAX_OUTPAINT)
        if not any(sides.values()):
            raise ParamError("outpaint_nothing")
        if fill not in INPAINT_FILLS:
            raise ParamError("unknown_inpaint_fill", value=str(fill)[:40])
        return cls(edit=edit, fill=fill, **sides)


# 6. 训练 LoRA -----------------------------------------------------------------------------------
# Presets a designer picks (the 高级 section shows and overrides the real knobs).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"steps": 400, "rank": 8, "alpha": 8, "learning_rate": 2e-4, "resolution": 512},
    "standard": {"steps": 1200, "rank": 16, "alpha": 16, "learning_rate": 1e-4, "resolution": 512},
    "fine": {"steps": 2400, "rank": 32, "alpha": 16, "learning_rate": 5e-5, "resolution": 768},
}
MIN_TRAIN_IMAGES = 1  # the UI asks for 5–200; the engine trains on what it is given
MAX_TRAIN_IMAGES = 200
MAX_TRAIN_STEPS = 20000
MAX_RANK = 128
# A LoRA's name becomes a file name: letters (Chinese too), digits, '-' and '_'.
TRAIN_NAME = re.compile(r"^[^\W][\w\-]{0,63}$")


@dataclass(frozen=True)
class TrainLora:
    """One LoRA training run on the loaded base model.

    ``images``: files already inside the run's folder (the studio unpacks uploads there);
    ``captions``: one per image ("" = the trigger word alone); the trigger word is put first in
    every caption that lacks it. Steps count optimizer steps of ``batch_size`` images each.
    """

    name: str
    trigger: str
    images: tuple[str, ...]
    captions: tuple[str, ...]
    steps: int = 1200  # used when epochs is 0
    epochs: int = 0  # > 0: train this many passes over the pictures (× repeats) instead of `steps`
    repeats: int = 1  # each picture seen this many times per epoch (Kohya's folder repeats)
    buckets: bool = True  # aspect-ratio buckets: pictures keep their shape (else centre-cropped square)
    rank: int = 16
    alpha: float = 16
    learning_rate: float = 1e-4
    text_encoder_lr: float = 5e-5
    train_text_encoder: bool = False
    resolution: int = 512
    batch_size: int = 1
    seed: int = 0
    save_every: int = 0  # 0: only at the end (and when stopped)
    sample_every: int = 0
    sample_prompt: str = ""
    min_snr_gamma: float = 0.0  # 0: plain MSE; 5 is the usual min-SNR weighting
    gradient_checkpointing: bool = False
    preview: bool = True  # render a preview image beside the finished LoRA

    @classmethod
    def build(cls, name: object, trigger: object, images, captions=None, preset: str | None = None,
              **knobs: Any) -> "TrainLora":
        name = text_field("name", name).strip()
        if not TRAIN_NAME.match(name):
            raise ParamError("train_bad_name", name=name[:80])
        trigger = text_field("trigger", trigger).strip()[:200]
        images = tuple(str(p) for p in (images or ()))
        if not MIN_TRAIN_IMAGES <= len(images) <= MAX_TRAIN_IMAGES:
            raise ParamError("train_image_count", count=len(images), low=MIN_TRAIN_IMAGES, high=MAX_TRAIN_IMAGES)
        captions = [text_field("caption", c or "").strip() for c in (captions or [""] * len(images))]
        if len(captions) != len(images):
            raise ParamError("train_caption_count", images=len(images), captions=len(captions))
        if trigger:
            captions = [c if trigger in c else (f"{trigger}, {c}" if c else trigger) for c in captions]
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in TRAIN_PRESETS:
                raise ParamError("train_bad_preset", value=str(preset)[:40])
            values.update(TRAIN_PRESETS[preset])
        values.update({k: v for k, v in knobs.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ParamError("train_unknown_option", value=", ".join(sorted(unknown))[:80])
        checked = {}
        for key, low, high in (("steps", 1, MAX_TRAIN_STEPS), ("epochs", 0, MAX_TRAIN_STEPS), ("repeats", 1, 100),
                               ("rank", 1, MAX_RANK), ("batch_size", 1, 8),
                               ("save_every", 0, MAX_TRAIN_STEPS), ("sample_every", 0, MAX_TRAIN_STEPS),
                               ("resolution", 64, 1024)):
            if key in values:
                checked[key] = as_int(key, values[key])
                in_range(key, checked[key], low, high)
        if checked.get("resolution", 512) % 8:
            raise ParamError("size_not_multiple_of_8", width=checked["resolution"], height=checked["resolution"])
        for key, low, high in (("alpha", 0.0, 1024.0), ("learning_rate", 1e-7, 1e-2), ("text_encoder_lr", 0.0, 1e-2),
                               ("min_snr_gamma", 0.0, 20.0)):
            if key in values:
                checked[key] = as_float(key, values[key])
                in_range(key, checked[key], low, high)
        if "seed" in values:
            checked["seed"] = resolve_seed(values["seed"])
        for key in ("train_text_encoder", "gradient_checkpointing", "preview", "buckets"):
            if key in values:
                checked[key] = bool(values[key])
        if "sample_prompt" in values:
            checked["sample_prompt"] = text_field("sample_prompt", values["sample_prompt"])
        return cls(name=name, trigger=trigger, images=images, captions=tuple(captions), **checked)

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps of the run: ``steps``, or ``epochs`` passes of ``batches_per_epoch``."""
        if not self.epochs:
            return self.steps
        total = self.epochs * batches_per_epoch
        if total > MAX_TRAIN_STEPS:
            raise ParamError("train_too_many_steps", steps=total, high=MAX_TRAIN_STEPS)
        return total
