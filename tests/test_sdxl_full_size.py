"""A full-size SDXL (the base model's architecture: 2.6 B-parameter U-Net, CLIP ViT-L and
OpenCLIP ViT-bigG, the SDXL VAE) with random weights, saved by this test as a diffusers folder,
gives the same pixels through Danqing's store and 文生图 as through plain diffusers'
StableDiffusionXLPipeline for the same job (CPU, 128², 2 steps, Euler, CFG). About 3 minutes and
14 GiB on 2 cores: the models are loaded one after the other, never side by side."""

import gc

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

PROMPT = "竹林里的大熊猫，国风"


def test_full_size_sdxl_gives_plain_diffusers_pixels(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from bench.sdxl import build_sdxl
    from pipelines.requests import Txt2Img
    from pipelines.store import ModelStore
    from pipelines.store.settings import EngineSettings
    from pipelines.tasks import txt2img

    folder = build_sdxl(tmp_path / "sdxl-random")
    plain = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    plain.set_progress_bar_config(disable=True)
    assert sum(p.numel() for p in plain.unet.parameters()) > 2.5e9  # the real U-Net's size
    ref = np.asarray(plain(PROMPT, negative_prompt="模糊", width=128, height=128, num_inference_steps=2,
                           guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(7)).images[0])
    del plain
    gc.collect()
    store = ModelStore(EngineSettings(model=str(folder), models_dir=tmp_path / "models", device="cpu", dtype="fp32"))
    request = Txt2Img.from_fields(prompt=PROMPT, negative_prompt="模糊", width=128, height=128, num_inference_steps=2,
                                  guidance_scale=7.5, seed=7, sampler="Euler")
    ours = np.asarray(txt2img.run(store, request).images[0])
    assert store.family.name == "sdxl"
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1
    assert ref.std() > 0  # a picture, not a flat field
