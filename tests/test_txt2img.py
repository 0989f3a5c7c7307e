"""Text-to-image behaviour on the demo bundle."""

import threading

import numpy as np
import pytest

from pipelines.tasks import txt2img
from pipelines.errors import JobCancelled
from pipelines.requests import Txt2Img

SMALL = dict(width=64, height=64, num_inference_steps=3)


def pixels(store, **kwargs):
    result = txt2img.run(store, Txt2Img.from_fields(**{"prompt": "竹林里的熊猫，水墨画", **SMALL, **kwargs}))
    return [np.asarray(im) for im in result.images], result


def test_same_seed_same_pixels_other_seed_other_pixels(store):
    a, _ = pixels(store, seed=1234)
    b, _ = pixels(store, seed=1234)
    c, _ = pixels(store, seed=1235)
    assert a[0].shape == (64, 64, 3)
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_batch_images_use_consecutive_seeds(store):
    batch, result = pixels(store, seed=50, num_images_per_prompt=2)
    assert result.seeds == [50, 51]
    single, _ = pixels(store, seed=51)
    assert np.abs(batch[1].astype(int) - single[0].astype(int)).max() <= 1


def test_sampler_choice_changes_the_image(store):
    a, _ = pixels(store, seed=7, sampler="Euler a")
    b, _ = pixels(store, seed=7, sampler="DDIM")
    assert not np.array_equal(a[0], b[0])


def test_matches_plain_diffusers_for_the_same_seed(store):
    """Danqing's path gives diffusers' own pixels: same scheduler, same noise, same decode."""
    import torch
    from diffusers import StableDiffusionPipeline

    ours, _ = pixels(store, seed=99, sampler="DPM++ 2M", guidance_scale=7.0)
    plain = StableDiffusionPipeline.from_pretrained(
        store.choice("danqing-demo-zh").source, safety_checker=None, requires_safety_checker=False
    )
    from pipelines.tasks.schedulers import make_scheduler

    plain.scheduler = make_scheduler("DPM++ 2M", plain.scheduler.config)
    ref = plain(
        "竹林里的熊猫，水墨画", negative_prompt=None, width=64, height=64, num_inference_steps=3,
        guidance_scale=7.0, generator=[torch.Generator("cpu").manual_seed(99)],
    ).images[0]
    assert np.abs(np.asarray(ref).astype(int) - ours[0].astype(int)).max() <= 1


def test_long_prompt_is_chunked_visibly(store):
    long_prompt = "一只在竹林里吃竹子的大熊猫，" * 8  # far over the 32-token window
    _, result = pixels(store, prompt=long_prompt, seed=3)
    assert result.notices["prompt_chunks"] >= 3
    # The text past the first window still matters.
    _, short = pixels(store, prompt=long_prompt[:20], seed=3)
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(short.images[0]))


def test_stop_ends_the_job_within_one_step(store):
    cancel = threading.Event()
    seen = []

    def on_step(step, total):
        seen.append(step)
        if step == 2:
            cancel.set()

    params = Txt2Img.from_fields(prompt="猫", width=64, height=64, num_inference_steps=20, seed=1)
    with pytest.raises(JobCancelled):
        txt2img.run(store, params, cancel=cancel, on_step=on_step)
    assert seen == [1, 2]
    # The store is free again: the next job runs.
    pixels(store, seed=1)
