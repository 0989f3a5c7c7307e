"""Few-step (distilled) models: which LoRA or base model is one, and the settings its authors
publish (``configs/fewstep.json``): sampler, steps, CFG, schedule type, eta.

How a file is recognised, surest first:

1. Its metadata (safetensors ``__metadata__``: ``modelspec.title``/``description``, Kohya's
   ``ss_output_name``/``ss_training_comment``, a ``name``) or its model card's title names the
   method: LCM / latent consistency, TCD / trajectory consistency, Hyper-SD (with its step count,
   "CFG" for the CFG-preserved ones).
2. Its key layout: a distillation LoRA adapts the whole U-Net — attention, feed-forward, the
   ResNet convolutions *and* their time-embedding projections, the down/up-samplers — and no
   text encoder (LCM-LoRA's and TCD's training scripts target exactly these). A style LoRA
   (Kohya's default, PAI's) adapts the transformer blocks only; LoCon-style ones that also
   touch the ResNets keep the text encoder. A file with this layout and no name for its method
   is taken as LCM (the LCM sampler also runs TCD and Hyper-SD LoRAs acceptably).
3. Its file name, the same words as 1 (a renamed file is still found by 2).

A base model is few-step when its U-Net takes a guidance embedding (``time_cond_proj_dim``:
LCM-distilled U-Nets such as LCM_Dreamshaper) or its name/card says LCM, TCD or Hyper — or
Z-Image-Turbo (distilled to 8 steps without CFG).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

CONFIG = Path(__file__).with_name("configs") / "fewstep.json"

_METHODS = json.loads(CONFIG.read_text(encoding="utf-8"))
METHODS: dict[str, dict] = {k: v for k, v in _METHODS.items() if not k.startswith("_")}

# Metadata fields that name a model (Kohya, SAI model spec, diffusers' "name").
NAME_FIELDS = ("modelspec.title", "modelspec.description", "ss_output_name", "ss_training_comment", "name",
               "description", "title")

# How sure each kind of evidence is, surest first.
RANK = ("config", "metadata", "card", "layout", "name")

_ZIMAGE_TURBO = re.compile(r"z[-_ ]?image[-_ ]?turbo", re.IGNORECASE)
_HYPER = re.compile(r"hyper[-_ ]?sd", re.IGNORECASE)
_LIGHTNING = re.compile(r"lightning", re.IGNORECASE)
_DMD2 = re.compile(r"(?<![a-z])dmd2?(?![a-z])", re.IGNORECASE)
_TCD = re.compile(r"(?<![a-z])tcd(?![a-z])|trajectory[-_ ]?consistency", re.IGNORECASE)
_LCM = re.compile(r"(?<![a-z])lcm(?![a-z])|latent[-_ ]?consistency", re.IGNORECASE)
_STEPS = re.compile(r"(\d{1,2})[-_ ]?steps?(?![a-z])", re.IGNORECASE)
_CFG = re.compile(r"(?<![a-z])cfg(?![a-z])", re.IGNORECASE)

# U-Net module names of the distillation layout, as they appear in any key format (diffusers
# dots, Kohya underscores, and the LDM names of Kohya's SDXL files): the ResNets'
# time-embedding projections and convolutions.
_TIME_EMB = re.compile(r"resnets[._]\d+[._]time_emb_proj|_\d+_0_emb_layers_1")
_RESNET_CONV = re.compile(r"resnets[._]\d+[._]conv[12]|_\d+_0_(in|out)_layers_[23]")
_ATTENTION = re.compile(r"attn[12][._]to_[qkv]")
_TEXT = re.compile(r"^(lora_te_|lora_te1_|lora_te2_|text_encoder[._]|text_encoder_2[._]|te[._])")


@dataclass(frozen=True)
class FewStep:
    """A recognised few-step model: its method (a key of configs/fewstep.json), how it was
    recognised ("metadata", "card", "layout", "name", "config"), and the settings to use."""

    method: str
    evidence: str
    steps: int
    settings: dict = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        return self.settings["label"]

    @property
    def sampler(self) -> str:
        return self.settings["sampler"]

    @property
    def cfg(self) -> float:
        return float(self.settings["cfg"])

    @property
    def schedule_type(self) -> str:
        return self.settings.get("schedule_type", "Automatic")

    @property
    def eta(self) -> float | None:
        return self.settings.get("eta")

    @property
    def steps_range(self) -> tuple[int, int]:
        low, high = self.settings.get("steps_range") or (self.steps, self.steps)
        return int(low), int(high)

    @property
    def cfg_range(self) -> tuple[float, float]:
        low, high = self.settings.get("cfg_range") or (self.cfg, self.cfg)
        return float(low), float(high)

    @property
    def source(self) -> str:
        return self.settings.get("source", "")

    def as_dict(self) -> dict:
        return {"method": self.method, "label": self.label, "evidence": self.evidence, "sampler": self.sampler,
                "steps": self.steps, "steps_range": list(self.steps_range), "cfg": self.cfg,
                "cfg_range": list(self.cfg_range), "schedule_type": self.schedule_type, "eta": self.eta,
                "source": self.source}


def make(method: str, evidence: str, steps: int | None = None) -> FewStep:
    settings = METHODS[method]
    return FewStep(method, evidence, int(steps or settings["steps"]), settings)


def from_text(text: str, evidence: str, merged: bool = False) -> FewStep | None:
    """The method a name or description mentions (None: none). ``merged``: a base model's name
    (an LCM checkpoint is LCM-LoRA merged into the weights)."""
    if not text:
        return None
    steps_found = _STEPS.search(text)
    steps = int(steps_found.group(1)) if steps_found else None
    if _ZIMAGE_TURBO.search(text):
        return make("zimage-turbo", evidence)
    if _HYPER.search(text):
        if _CFG.search(text):
            return make("hyper-cfg", evidence, steps)
        if steps == 1:
            return make("hyper-1step", evidence)
        return make("hyper", evidence, steps if steps and 1 < steps <= 16 else None)
    if _LIGHTNING.search(text):  # SDXL-Lightning: 2, 4 or 8 steps (1-step is x0-prediction: not offered)
        return make("lightning", evidence, steps if steps in (2, 4, 8) else None)
    if _DMD2.search(text):
        return make("dmd2", evidence)
    if _TCD.search(text):
        return make("tcd", evidence)
    if _LCM.search(text):
        return make("lcm-merged" if merged else "lcm", evidence)
    return None


def distillation_layout(keys: list[str]) -> bool:
    """Whether a LoRA's keys adapt the whole U-Net the way LCM/TCD/Hyper-SD LoRAs do (see the
    module docstring): ResNet time-embedding projections and convolutions as well as
    attention, and nothing of the text encoder."""
    if not keys or any(_TEXT.search(k) for k in keys):
        return False
    return (any(_TIME_EMB.search(k) for k in keys) and any(_RESNET_CONV.search(k) for k in keys)
            and any(_ATTENTION.search(k) for k in keys))


def recognise_lora(name: str, metadata: dict[str, str], keys: list[str], card: dict | None = None) -> FewStep | None:
    """A LoRA file's few-step method, from its metadata, card, key layout, then file name."""
    named = "\n".join(str(metadata.get(f, "")) for f in NAME_FIELDS)
    found = from_text(named, "metadata")
    if found is None and card:
        found = from_text("\n".join(str(card.get(f) or "") for f in ("title", "description")), "card")
    if found is None and distillation_layout(keys):
        from_name = from_text(Path(name).name, "layout")  # the layout says few-step; the name may say which
        found = from_name or make("lcm", "layout")
    if found is None:
        found = from_text(Path(name).name, "name")
    return found


def recognise_base(name: str, unet_config: dict | None = None, card: dict | None = None) -> FewStep | None:
    """A base model's few-step method: a U-Net with a guidance embedding is an LCM-distilled
    one; otherwise its name or card (LCM merged in, Hyper-SD, TCD)."""
    if unet_config and unet_config.get("time_cond_proj_dim"):
        return make("lcm-unet", "config")
    found = from_text(Path(name).name, "name", merged=True)
    if found is None and card:
        found = from_text("\n".join(str(card.get(f) or "") for f in ("title", "description")), "card", merged=True)
    return found
