"""A Z-Image at full width (the transformer's 3840 channels and 30 heads of 128, its 2560-wide
caption embedder; Qwen3-4B's 2560-wide layers; the full-size 16-channel autoencoder) with one
main block and one refiner each side, random weights, saved by this test as a diffusers folder
in bf16 as the hub ships it, gives the same pixels through Danqing's store and 文生图 as through
plain diffusers' ZImagePipeline for the same job (CPU, fp32, 128², 2 steps, CFG with a negative
prompt, a quoted Chinese title). The models are loaded one after the other, never side by side."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PROMPT = "海报，标题“丹青”，水墨山水"


def test_full_width_z_image_gives_plain_diffusers_pixels(tmp_path):
    from diffusers import ZImagePipeline

    from bench.zimage import build_zimage_full
    from conftest import plain_and_danqing

    def check(plain):
        assert plain.transformer.config.dim == 3840 and plain.text_encoder.config.hidden_size == 2560

    folder = build_zimage_full(tmp_path / "zimage-random", layers=1, refiners=1, text_layers=1, vocab=1024)
    ref, ours, store = plain_and_danqing(ZImagePipeline, folder, tmp_path / "models", PROMPT, 4.0, check)
    assert store.family.name == "zimage"
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1
    assert ours.std() > 0
