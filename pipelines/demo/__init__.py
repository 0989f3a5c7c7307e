"""The demo bundle: tiny random-weight models in the real on-disk formats.

``python app.py --demo``, the tests and CI use it. It is generated locally (once, into a cache
folder) with a fixed seed, laid out like a user's ``models/`` folder, and then loaded back
through exactly the code a real model goes through:

- ``checkpoints/danqing-demo-zh``: a PAI-Diffusion-shaped pipeline (BertTokenizer with a
  Chinese WordPiece ``vocab.txt`` and a 32-token window, CLIP text encoder, ``.bin`` weights),
  with the SD 1.x U-Net block layout at tiny widths;
- ``checkpoints/danqing-demo-st``: the same architecture with other weights, as safetensors;
- ``checkpoints/danqing-demo-inpainting``: a dedicated inpainting model (9-channel U-Net);
- ``checkpoints/danqing-demo-single.safetensors``, ``vae/``, ``embeddings/``: an A1111 single
  file, an external VAE and textual-inversion embeddings (``library.py``);
- ``checkpoints/danqing-demo-xl`` (+ ``-inpainting``, ``-single.safetensors``): a tiny SDXL as a
  diffusers folder, a 9-channel SDXL inpainting folder and a Civitai-style single file (``sdxl.py``);
- ``checkpoints/danqing-demo-kolors``: a tiny Kolors (可图) — ChatGLM3 encoder, SDXL U-Net — and a
  U-Net LoRA for it (``kolors.py``);
- ``checkpoints/danqing-demo-z-image-turbo``: a tiny Z-Image (造相) — Qwen3 encoder, diffusion
  transformer, 16-channel autoencoder (``zimage.py``), and its ControlNet union as a folder and
  as alibaba-pai's single file (``controlnet/demo-z-image-controlnet-union*``), and the same
  Z-Image as ComfyUI's split files (``diffusion_models/``, ``text_encoders/``, ``vae/``, and a
  Q8_0 GGUF), and one Z-Image LoRA in the PEFT, ComfyUI and Kohya layouts (``lora/``);
- ``captioners/danqing-demo-blip-zh``: a BLIP captioner in Taiyi-BLIP's layout (``captioner.py``);
- ``translators/danqing-demo-opus-mt-zh-en``: a MarianMT translator in opus-mt-zh-en's layout
  (``translator.py``), for Chinese prompts on the English-only demo SDXL;
- ``prompters/danqing-demo-qwen-prompter``: a Qwen2-style instruct model for 提示词扩写 (``prompter.py``).

Images from it are noise: the weights are random. The writers import the engine (to check
what they wrote loads back); the engine never imports them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..store.folders import ModelFolders
from .captioner import DEMO_CAPTIONER, save_demo_captioner
from .translator import DEMO_TRANSLATOR, save_demo_translator
from .prompter import DEMO_PROMPTER, save_demo_prompter
from .controlnet import save_demo_controlnets, save_demo_sdxl_controlnets
from .esrgan import save_demo_upscalers
from .library import save_demo_embeddings, save_demo_single_file, save_demo_vae
from .lora import save_demo_loras
from .kolors import save_demo_kolors, save_demo_kolors_lora
from .zimage import save_demo_zimage, save_demo_zimage_loras, save_demo_zimage_split
from .sdxl import save_demo_sdxl, save_demo_sdxl_loras
from .sd import DEMO_MODEL, DEMO_MODEL_INPAINT, DEMO_MODEL_SAFETENSORS, TOKEN_WINDOW, save_sd_pipeline

__all__ = ["DEMO_MODEL", "DEMO_MODEL_INPAINT", "DEMO_MODEL_SAFETENSORS", "TOKEN_WINDOW", "ensure_demo_bundle"]

log = logging.getLogger(__name__)

# Bump when the bundle's content changes so old caches are rebuilt.
BUNDLE_VERSION = "16"


def default_cache_dir() -> Path:
    base = os.environ.get("DANQING_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "danqing"
    )
    return Path(base)


def ensure_demo_bundle(cache_dir: Path | None = None) -> Path:
    """Return the bundle's models folder, generating it first if it is missing or outdated."""
    root = (cache_dir or default_cache_dir()) / f"demo-v{BUNDLE_VERSION}"
    if (root / "COMPLETE").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling and rename, so a crash never leaves half a bundle.
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    try:
        log.info("generating the demo bundle in %s", root)
        build_bundle(staging)
        (staging / "COMPLETE").write_text(BUNDLE_VERSION)
        try:
            staging.rename(root)
        except OSError:
            if not (root / "COMPLETE").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def build_bundle(root: Path) -> None:
    """Write every demo model into ``root`` in the ``models/<kind>/`` layout."""
    folders = ModelFolders(root)
    folders.ensure()
    ckpt = folders.folder("checkpoints")
    # PAI publishes .bin weights; the second demo model covers safetensors.
    save_sd_pipeline(ckpt / DEMO_MODEL, seed=0, safe_serialization=False)
    save_sd_pipeline(ckpt / DEMO_MODEL_SAFETENSORS, seed=1, safe_serialization=True)
    # A dedicated inpainting model (9-channel U-Net), as safetensors.
    save_sd_pipeline(ckpt / DEMO_MODEL_INPAINT, seed=2, safe_serialization=True, inpainting=True)
    save_demo_single_file(ckpt, ckpt / DEMO_MODEL_SAFETENSORS)
    save_demo_sdxl(ckpt)
    save_demo_kolors(ckpt)
    save_demo_kolors_lora(root)
    save_demo_zimage_split(save_demo_zimage(ckpt, folders.folder("controlnet")), root)
    save_demo_zimage_loras(folders.folder("lora"))
    save_demo_vae(folders.folder("vae"))
    save_demo_embeddings(folders.folder("embeddings"))
    (root / "README.txt").write_text(
        "Danqing demo bundle: tiny random-weight models generated locally. Images are noise.\n"
    )
    save_demo_controlnets(root)
    save_demo_sdxl_controlnets(root)
    save_demo_upscalers(folders.folder("upscalers"))
    save_demo_loras(root)
    save_demo_sdxl_loras(root)
    save_demo_captioner(folders.folder("captioners") / DEMO_CAPTIONER)
    save_demo_translator(folders.folder("translators") / DEMO_TRANSLATOR)
    save_demo_prompter(folders.folder("prompters") / DEMO_PROMPTER)
