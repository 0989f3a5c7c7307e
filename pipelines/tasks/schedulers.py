"""A1111 sampler names mapped to diffusers schedulers (built from the model's own config), with
A1111's schedule types: Karras sigmas, or the trailing timesteps ("SGM Uniform") that
few-step models (Hyper-SD, SDXL-Lightning, TCD) are distilled on."""

from __future__ import annotations

import inspect

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

from ..errors import ParamError

SAMPLERS: dict[str, tuple[type, dict]] = {
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "DPM++ 2M SDE Karras": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Heun": (HeunDiscreteScheduler, {}),
    "LMS": (LMSDiscreteScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "LCM": (LCMScheduler, {}),
    "TCD": (TCDScheduler, {}),
}

# TCD's own default gamma (the pipelines pass eta=0 otherwise, which TCD reads as gamma 0).
DEFAULT_ETA = {"TCD": 0.3}


def make_scheduler(name: str, base_config, schedule_type: str = "Automatic", flow: bool = False):
    """A fresh scheduler for one job: never mutate the shared base pipeline's scheduler.
    ``schedule_type``: "Karras" (Karras sigmas, where the sampler has them) or "SGM Uniform"
    (timesteps spaced from the last one, diffusers' "trailing"). ``flow``: a flow-matching model
    (Z-Image): its own Euler from its own config (shift, sigmas), whatever the name (the job's
    sampler name was made "Euler" before: studio/generation.py says so in the notices)."""
    if flow:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(base_config)
    try:
        cls, overrides = SAMPLERS[name]
    except KeyError:
        raise ParamError("unknown_sampler", value=str(name)[:60]) from None
    overrides = dict(overrides)
    if schedule_type == "SGM Uniform":
        overrides["timestep_spacing"] = "trailing"
        if "use_karras_sigmas" in overrides:
            overrides["use_karras_sigmas"] = False
    elif schedule_type == "Karras" and "use_karras_sigmas" in inspect.signature(cls.__init__).parameters:
        overrides["use_karras_sigmas"] = True
    return cls.from_config(base_config, **overrides)


def step_eta(name: str, eta: float | None) -> float | None:
    """The eta a job's sampler steps with: TCD's gamma (the request's, else TCD's own 0.3).
    None for every other sampler: their steps keep what they always did."""
    if name not in DEFAULT_ETA:
        return None
    return eta if eta is not None else DEFAULT_ETA[name]
