"""Demo files for the model library: a single-file checkpoint, an external VAE and
textual-inversion embeddings, each in the format A1111 users have on disk.

- ``checkpoints/danqing-demo-single.safetensors``: ``danqing-demo-st`` in the LDM key layout,
  fp16 (a "pruned fp16" Civitai file);
- ``vae/danqing-demo-vae.safetensors``: another VAE of the demo's shape, LDM keys without a
  prefix (``vae-ft-mse-840000-ema-pruned.safetensors`` style);
- ``embeddings/``: ``demo-neg.pt`` (A1111's ``string_to_param``, two vectors),
  ``demo-style.safetensors`` (A1111's ``emb_params``), ``demo-diffusers.bin`` (diffusers'
  ``{token: vector}``), and ``sd15-only.pt``, 768 wide: listed as not fitting the demo's
  32-wide text encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .sd import tiny_vae
from .single_file import save_single_file, vae_to_ldm

DEMO_SINGLE_FILE = "danqing-demo-single.safetensors"
DEMO_VAE = "danqing-demo-vae.safetensors"
DEMO_EMBEDDINGS = ("demo-neg", "demo-style", "demo-diffusers")


def save_demo_single_file(checkpoints: Path, source: Path) -> Path:
    """The single file, with the A1111 card and preview image a Civitai download leaves beside it."""
    import shutil

    from diffusers import StableDiffusionPipeline
    from PIL import Image

    pipe = StableDiffusionPipeline.from_pretrained(source, safety_checker=None, requires_safety_checker=False)
    path = save_single_file(pipe, checkpoints / DEMO_SINGLE_FILE, dtype=torch.float16)
    stem = DEMO_SINGLE_FILE[: -len(".safetensors")]
    # The card is a data file of the fixtures (cards/), as a user's A1111 card would be.
    shutil.copy(Path(__file__).with_name("cards") / f"{stem}.json", checkpoints / f"{stem}.json")
    gradient = Image.linear_gradient("L").resize((96, 96)).convert("RGB")
    gradient.save(checkpoints / f"{stem}.preview.png")
    return path


def demo_vae(seed: int):
    """A VAE with the demo pipelines' shape and its own weights."""
    torch.manual_seed(seed)
    return tiny_vae()


def save_demo_vae(folder: Path, seed: int = 7) -> Path:
    from safetensors.torch import save_file

    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(demo_vae(seed)).items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / DEMO_VAE))
    return folder / DEMO_VAE


def save_demo_embeddings(folder: Path, width: int = 32, seed: int = 11) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)

    def vectors(count: int, dim: int = width) -> torch.Tensor:
        return torch.randn(count, dim, generator=generator) * 0.5

    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors(2)}, "name": "demo-neg",
                "step": 1000, "sd_checkpoint": None, "sd_checkpoint_name": None}, folder / "demo-neg.pt")
    save_file({"emb_params": vectors(1)}, str(folder / "demo-style.safetensors"))
    torch.save({"<demo-diffusers>": vectors(1)[0]}, folder / "demo-diffusers.bin")
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors(3, 768)}, "name": "sd15-only",
                "step": 500}, folder / "sd15-only.pt")
