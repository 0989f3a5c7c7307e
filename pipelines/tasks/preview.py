"""Live step previews: a cheap picture of the latents while a job is still denoising.

Why: on a shared server or a CPU a 20-step image takes from seconds to minutes; a designer
wants to see early whether the composition is going where they meant, and stop it if not.

Two decoders, never the full VAE (decoding 512² with the SD VAE costs about 2.3 U-Net steps on
a CPU — a preview every step would more than double the job; ``python -m bench.decoders``):

- ``approx``: a fixed 4×3 linear map from latent channels to RGB, the model family's own
  (formats/families.py: the "Approx cheap" projections A1111 publishes in
  ``sd_samplers_common.py`` for SD 1.x and SDXL; SD 1.x VAEs share the latent space, so it
  holds for PAI-Diffusion and Taiyi too). Costs well under a millisecond; the picture is
  blurry, 1/8 of the final size, colours roughly right.
- ``taesd``: a tiny autoencoder's decoder (diffusers ``AutoencoderTiny``, e.g. madebyollin/taesd
  downloaded as a diffusers folder into ``models/vae-approx/``; madebyollin/taesdxl for SDXL,
  picked by the ``xl`` in its name), used when one for the family is there. Sharp,
  full size, a fraction of the VAE's cost.

Previews are rate-limited by wall time (``every_seconds``), so a fast GPU job does not spend
its time encoding previews, and the last step is never previewed (the real image follows).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Callable

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

PREVIEW_METHODS = ("auto", "approx", "taesd", "off")
PREVIEW_MAX_SIDE = 384  # previews are shown small (and travel once a second): long side at most

# SD 1.x latent channel -> (R, G, B) weights, for latents in the U-Net's (scaled) space.
SD1_LATENT_RGB = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])

PreviewHook = Callable[[Image.Image, int, int], None]


def _to_image(rgb: torch.Tensor) -> Image.Image:
    """(3, h, w) in [-1, 1] to a PIL image."""
    array = ((rgb.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def _display_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, PREVIEW_MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def approx_decode(latents: torch.Tensor, factors: torch.Tensor = SD1_LATENT_RGB,
                  bias: torch.Tensor | None = None) -> Image.Image:
    """First image of a (B, C, h, w) latent batch, through the linear map ``factors`` (the
    family's: 4 channels for SD 1.x/SDXL, 16 for Z-Image's Flux autoencoder) plus ``bias``,
    at 8× (capped)."""
    latent = latents[0].detach().float().cpu()
    if latent.shape[0] != factors.shape[0]:
        raise ValueError(f"the approximate preview knows {factors.shape[0]}-channel latents, not {latent.shape[0]}")
    rgb = torch.einsum("chw,cr->rhw", latent, factors)
    if bias is not None:
        rgb = rgb + bias.view(3, 1, 1)
    image = _to_image(rgb)
    return image.resize(_display_size(image.width * 8, image.height * 8), Image.Resampling.BILINEAR)


def tiny_decode(decoder, latents: torch.Tensor) -> Image.Image:
    """First image of the batch through a tiny autoencoder (``AutoencoderTiny``)."""
    param = next(decoder.parameters())
    with torch.no_grad():
        # AutoencoderTiny's scaling factor is 1: it takes the U-Net's latents as they are.
        rgb = decoder.decode(latents[:1].to(param.device, param.dtype), return_dict=False)[0][0]
    image = _to_image(rgb)
    size = _display_size(image.width, image.height)
    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


def load_tiny_decoder(folder, device: torch.device, dtype: torch.dtype):
    """A diffusers ``AutoencoderTiny`` folder, its encoder dropped (only decoding is needed)."""
    from diffusers import AutoencoderTiny

    model = AutoencoderTiny.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    model.encoder = None  # half the weights; previews never encode
    return model.to(device).eval()


class Previewer:
    """A step hook for latents: every ``every_seconds`` at most, decode a preview and hand it on.

    ``decode`` is ``approx_decode`` or a bound ``tiny_decode``. A failing preview is logged once
    and previews stop for that job: a preview must never cost the user their image.
    """

    def __init__(self, decode: Callable[[torch.Tensor], Image.Image], sink: PreviewHook,
                 every_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.decode, self.sink, self.every, self.clock = decode, sink, every_seconds, clock
        self.last = clock()  # the first preview comes after one interval, not at step 1
        self.failed = False
        self.count = 0

    def __call__(self, step: int, total: int, latents: torch.Tensor) -> None:
        if self.failed or step >= total or self.clock() - self.last < self.every:
            return
        try:
            image = self.decode(latents)
        except Exception as exc:  # noqa: BLE001 (a preview is optional by nature)
            log.warning("live preview failed, no more previews for this job: %s", exc)
            self.failed = True
            return
        self.last = self.clock()
        self.count += 1
        self.sink(image, step, total)


def tiny_decoder_kind(name: str) -> str:
    """Which latents a tiny decoder folder reads, by madebyollin's names: taef1 (the Flux
    autoencoder's 16 channels: Z-Image), taesdxl (SDXL, Kolors), else taesd (SD 1.x)."""
    name = name.lower()
    return "f1" if "f1" in name else ("xl" if "xl" in name else "sd")


def preview_decoder(store):
    """How live previews are decoded (``settings.preview``): a function of the latents, or
    None when previews are off. A tiny decoder from models/vae-approx is loaded once into the
    store's cache; without one, or when it fails to load, the linear approximation is used."""
    method = store.settings.preview
    if method == "off":
        return None
    family = store.family
    approx = partial(approx_decode, factors=torch.tensor(family.latent_rgb), bias=torch.tensor(family.latent_rgb_bias))
    if method in ("auto", "taesd"):
        folders = store.folders
        names = [n for n in folders.list_diffusers_dirs("vae_approx", "config.json")
                 if tiny_decoder_kind(n) == tiny_decoder_kind(family.tiny_decoder)]
        if names:
            folder = folders.resolve("vae_approx", names[0])
            try:
                decoder = store.cached("preview_decoder", names[0],
                                       lambda: load_tiny_decoder(folder, store.plan.device, store.plan.dtype))
            except Exception:  # a broken folder must not break generation: previews fall back
                log.exception("the tiny preview decoder %s failed to load; using the approximation", names[0])
                return approx
            return partial(tiny_decode, decoder)
        if method == "taesd":
            log.warning("no tiny decoder for %s in %s; previews use the linear approximation", family.label,
                        folders.folder("vae_approx"))
    return approx
