"""A full-size SDXL (the base model's architecture: 2.6 B-parameter U-Net, CLIP ViT-L and
OpenCLIP ViT-bigG, the SDXL VAE) with random weights, saved by this test as a diffusers folder,
gives the same pixels through Danqing's store and 文生图 as through plain diffusers'
StableDiffusionXLPipeline for the same job (CPU, 128², 2 steps, Euler, CFG). About 3 minutes and
14 GiB on 2 cores: the models are loaded one after the other, never side by side."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PROMPT = "竹林里的大熊猫，国风"


def test_full_size_sdxl_gives_plain_diffusers_pixels(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from bench.sdxl import build_sdxl
    from conftest import plain_and_danqing

    def check(plain):
        assert sum(p.numel() for p in plain.unet.parameters()) > 2.5e9  # the real U-Net's size

    folder = build_sdxl(tmp_path / "sdxl-random")
    ref, ours, store = plain_and_danqing(StableDiffusionXLPipeline, folder, tmp_path / "models", PROMPT, 7.5, check)
    assert store.family.name == "sdxl"
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1
    assert ref.std() > 0  # a picture, not a flat field
