"""A Z-Image at full width (the transformer's 3840 channels and 30 heads of 128, its 2560-wide
caption embedder; Qwen3-4B's 2560-wide layers; the full-size 16-channel autoencoder) with one
main block and one refiner each side, random weights, saved by this test as a diffusers folder
in bf16 as the hub ships it, gives the same pixels through Danqing's store and 文生图 as through
plain diffusers' ZImagePipeline for the same job (CPU, fp32, 128², 2 steps, CFG with a negative
prompt, a quoted Chinese title). The models are loaded one after the other, never side by side."""

import gc

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

PROMPT = "海报，标题“丹青”，水墨山水"


def test_full_width_z_image_gives_plain_diffusers_pixels(tmp_path):
    from diffusers import ZImagePipeline

    from bench.zimage import build_zimage_full
    from pipelines.requests import Txt2Img
    from pipelines.store import ModelStore
    from pipelines.store.settings import EngineSettings
    from pipelines.tasks import txt2img

    folder = build_zimage_full(tmp_path / "zimage-random", layers=1, refiners=1, text_layers=1, vocab=1024)
    plain = ZImagePipeline.from_pretrained(folder, torch_dtype=torch.float32)
    plain.set_progress_bar_config(disable=True)
    assert plain.transformer.config.dim == 3840 and plain.text_encoder.config.hidden_size == 2560
    ref = np.asarray(plain(PROMPT, negative_prompt="模糊", width=128, height=128, num_inference_steps=2,
                           guidance_scale=4.0, generator=torch.Generator("cpu").manual_seed(7)).images[0])
    del plain
    gc.collect()
    store = ModelStore(EngineSettings(model=str(folder), models_dir=tmp_path / "models", device="cpu", dtype="fp32"))
    request = Txt2Img.from_fields(prompt=PROMPT, negative_prompt="模糊", width=128, height=128, num_inference_steps=2,
                                  guidance_scale=4.0, seed=7, sampler="Euler")
    ours = np.asarray(txt2img.run(store, request).images[0])
    assert store.family.name == "zimage"
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1
    assert ours.std() > 0
