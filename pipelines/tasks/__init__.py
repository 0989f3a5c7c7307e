"""The tasks: one module per task, each a plain function over the store and a request
(txt2img, controlnet, upscale, edit = img2img/inpaint/outpaint/hires fix), plus what they share
(the denoise loop, masks, the hires post-step, LoRA switching, annotators, schedulers, prompts,
previews, DeepCache). They run inside the job context."""

# The generation tasks register themselves under their stable names (registry.py) on import.
from . import controlnet, edit, txt2img  # noqa: E402,F401
