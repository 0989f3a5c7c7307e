"""Faults inside a job (issue 7): out of memory in the U-Net, the VAE or the upscaler becomes a
friendly error, leaves nothing behind, and the next job succeeds; switching the model while a
job runs waits for the job and never swaps weights mid-run."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_studio
from pipelines.errors import DanqingError
from pipelines.requests import Txt2Img, Upscale

JOB = dict(prompt="荷花", width=64, height=64, num_inference_steps=3, seed=21)


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def first_image(paths) -> np.ndarray:
    return np.asarray(Image.open(paths[0]).convert("RGB"))


@pytest.fixture
def fresh(demo_models, tmp_path):
    studio = make_studio(demo_models, tmp_path / "outputs")
    paths, _ = studio.txt2img(Txt2Img.from_fields(JOB))  # loads the model; the reference image
    return studio, first_image(paths)


def oom_once(module: torch.nn.Module, message: str):
    """A forward pre-hook that raises an out-of-memory error on the first call only."""
    calls = []

    def hook(mod, args):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError(message)

    return module.register_forward_pre_hook(hook), calls


@pytest.mark.parametrize("where", ["unet", "vae"])
def test_out_of_memory_in_a_model_is_a_friendly_error_and_the_next_job_succeeds(fresh, where):
    studio, reference = fresh
    baseline = live_tensors()
    module = studio.store.base().unet if where == "unet" else studio.store.base().vae.decoder
    handle, calls = oom_once(module, "CUDA out of memory. Tried to allocate 3.00 GiB")
    saved_before = sorted(studio.outputs.root.rglob("*.png"))
    try:
        with pytest.raises(DanqingError) as err:
            studio.txt2img(Txt2Img.from_fields(JOB))
        assert err.value.code == "out_of_memory"
        # Nothing half-made was saved, the stop switch and progress are released, and no
        # tensor of the failed job is still alive.
        assert sorted(studio.outputs.root.rglob("*.png")) == saved_before
        assert studio.jobs._running == {} and studio.jobs.snapshot() is None
        assert live_tensors() <= baseline + 5
        # 2. The next job (the hook now lets it through) gives the same image as before.
        paths, _ = studio.txt2img(Txt2Img.from_fields(JOB))
        assert len(calls) > 1
        assert np.array_equal(first_image(paths), reference)
    finally:
        handle.remove()


def test_out_of_memory_in_the_upscaler_is_a_friendly_error_and_the_next_run_works(fresh):
    studio, _ = fresh
    name = "realesr-general-x4v3-tiny.safetensors"
    picture = Image.new("RGB", (40, 32), (120, 30, 200))
    studio.upscale_images([picture], Upscale(name, 4))  # loads the upscaler
    from pipelines.tasks.upscale import load_upscaler

    model = load_upscaler(studio.store, name)

    def always(mod, args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")

    handle = model.register_forward_pre_hook(always)
    try:
        with pytest.raises(DanqingError) as err:
            studio.upscale_images([picture], Upscale(name, 4))
        assert err.value.code == "out_of_memory"
    finally:
        handle.remove()
    paths, info = studio.upscale_images([picture], Upscale(name, 4))
    assert Image.open(paths[0]).size == (160, 128) and info["scale"] == 4


def test_switching_the_model_while_a_job_runs_waits_for_the_job(fresh):
    studio, _ = fresh
    started, order, result = threading.Event(), [], {}

    def on_step(step, total):
        started.set()
        time.sleep(0.05)  # a slow job, so the switch surely arrives while it runs

    def job():
        result["paths"], _ = studio.txt2img(Txt2Img.from_fields({**JOB, "num_inference_steps": 12}), on_step=on_step)
        order.append("job done")

    def switch():
        studio.switch_model("danqing-demo-st")
        order.append("switched")

    worker = threading.Thread(target=job)
    worker.start()
    assert started.wait(60)
    switcher = threading.Thread(target=switch)
    switcher.start()
    worker.join(120)
    switcher.join(120)
    assert order == ["job done", "switched"]
    assert studio.store.current_ref == "danqing-demo-st"
    # The job ran on the old model from start to end: it matches the same job run alone there.
    alone = make_studio(studio.store.settings.models_dir, studio.outputs.root.parent / "alone")
    paths, _ = alone.txt2img(Txt2Img.from_fields({**JOB, "num_inference_steps": 12}))
    assert np.array_equal(first_image(result["paths"]), first_image(paths))
