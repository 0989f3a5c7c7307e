"""Library messages known to be false or harmless here, dropped at their source loggers,
narrowly (one logger and one message shape each; anything else those loggers say still shows).

- diffusers ``ModelMixin.to(dtype)``: "modules that should be kept in float32: []" on every cast,
  with an empty list; ``from_pipe`` casts on every job.
- diffusers, loading a folder of ``.bin`` weights (the PAI models, the demo bundle): an *error*
  "An error occurred while trying to fetch …: no file named diffusion_pytorch_model.safetensors"
  and "Defaulting to unsafe serialization", while it then loads the ``.bin`` as intended.
- diffusers' LDM converter, on a single file with EMA weights: advice about an
  ``--extract_ema`` flag of its conversion script (Danqing loads the non-EMA weights, as A1111).
- transformers, without torchvision: "`CLIPImageProcessor` requires torchvision (not installed);
  falling back …" (the PIL processor is the one Danqing uses).
- transformers' tokenizer: "Token indices sequence length is longer than the specified maximum",
  false here: long prompts are encoded in chunks (tasks/prompts.py).
- diffusers' LoRA loader, for a LoRA without text-encoder layers (most few-step and U-Net-only
  LoRAs): "No LoRA keys associated to CLIPTextModel found … open an issue …", with a GitHub link.
- peft, when a second adapter joins the first on the shared U-Net (Danqing's LoRA slots do that
  by design): UserWarning "Already found a `peft_config` attribute in the model".
- diffusers, building a pipeline with a DDIM scheduler from an SD config without
  ``clip_sample``: a FutureWarning printing the whole config; the pipeline then sets it as A1111
  has it (False), which is what Danqing wants.
"""

from __future__ import annotations

import logging
import warnings

KNOWN_NOISE = {
    "diffusers.models.modeling_utils": (
        ("should be kept in float32: []",),
        ("An error occurred while trying to fetch", "no file named diffusion_pytorch_model.safetensors"),
        ("Defaulting to unsafe serialization",),
    ),
    "diffusers.loaders.single_file_utils": (("only the non-EMA weights are extracted",),),
    "transformers.utils.import_utils": (("requires torchvision (not installed)", "falling back"),),
    "transformers.tokenization_utils_base": (("Token indices sequence length is longer than the specified maximum",),),
    "diffusers.loaders.peft": (("No LoRA keys associated to", "found with the prefix"),),
    "diffusers.loaders.lora_base": (("No LoRA keys associated to", "found with the prefix"),),
    "diffusers.loaders.lora_pipeline": (("No LoRA keys associated to", "found with the prefix"),),
}
# Python warnings (the warnings module, not logging): (category, message regex).
KNOWN_WARNINGS = (
    (UserWarning, r"Already found a `peft_config` attribute in the model"),
    (FutureWarning, r"The configuration file of this scheduler: DDIMScheduler"),
    # MarianTokenizer (opus-mt translators) would normalise punctuation with sacremoses; prompts
    # are phrases between commas, which it does not need.
    (UserWarning, r"Recommended: pip install sacremoses"),
)


class _KnownNoise(logging.Filter):
    def __init__(self, shapes: tuple[tuple[str, ...], ...]) -> None:
        super().__init__()
        self.shapes = shapes

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(all(part in message for part in shape) for shape in self.shapes)


def quiet_known_noise() -> None:
    """Install the filters once (idempotent)."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, shapes in KNOWN_NOISE.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _KnownNoise) for f in target.filters):
            target.addFilter(_KnownNoise(shapes))
