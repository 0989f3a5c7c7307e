"""Engine settings: which model, which folders, which device. Built once by app.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "alibaba-pai/pai-diffusion-artist-large-zh"

# Chinese models users pick most often (PRODUCT.md); listed in the model dropdown even before
# they are downloaded, so a user with a network can fetch one by choosing it.
KNOWN_HUB_MODELS: tuple[str, ...] = (
    "alibaba-pai/pai-diffusion-artist-large-zh",
    "alibaba-pai/pai-diffusion-artist-xlarge-zh",
    "alibaba-pai/pai-diffusion-general-large-zh",
    "alibaba-pai/pai-diffusion-general-xlarge-zh",
    "alibaba-pai/pai-diffusion-food-large-zh",
    "alibaba-pai/pai-diffusion-anime-large-zh",
    "IDEA-CCNL/Taiyi-Stable-Diffusion-1B-Chinese-v0.1",
)


@dataclass(frozen=True)
class EngineSettings:
    model: str = DEFAULT_MODEL
    models_dir: Path = Path("models")
    # (kind, folder) pairs of an existing A1111/ComfyUI install, read-only (store/folders.py).
    extra_model_dirs: tuple[tuple[str, Path], ...] = ()
    outputs_dir: Path = Path("outputs")
    # The external VAE at start: auto (one named like the checkpoint, else the model's own) |
    # none (the model's own) | a name under models/vae. Switchable later (ModelStore.set_vae).
    vae: str = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16
    demo: bool = False
    allow_download: bool = True
    # Fast-path options (bench/RESULTS.md has what each is worth where it was measured).
    channels_last: bool = False
    attention: str = "sdpa"  # sdpa (PyTorch FlashAttention-class kernels) | xformers | naive
    fuse_qkv: bool = False
    vae_tiling: bool = False  # decode large images tile by tile (bounded memory)
    compile: bool = False  # torch.compile the U-Net
    # Live step previews (pipelines/preview.py): auto (a tiny decoder from models/vae-approx
    # when there is one, else the linear approximation) | approx | taesd | off.
    preview: str = "auto"
    preview_every: float = 1.0  # seconds between two previews of one job, at least
    # How the base sits in GPU memory (store/memory.py): auto (from the free memory) | resident |
    # park (text encoders on the CPU between prompts) | fp8 (park + float8 denoiser weights).
    memory_mode: str = "auto"
    # Byte budget of the models cached next to the base (ControlNets, upscalers, annotators).
    cache_budget_bytes: int = 4 * 1024**3
