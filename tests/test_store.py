"""The model store: one base pipeline, shared by every task pipeline, loaded lazily once."""

import gc
import shutil
import weakref

import pytest

from conftest import make_studio
from pipelines.errors import DanqingError
from pipelines.requests import Txt2Img


def test_nothing_loads_until_first_use(demo_models, tmp_path):
    studio = make_studio(demo_models, tmp_path / "out")
    assert not studio.store.is_loaded()
    assert studio.store.resident_models() == []
    studio.store.base()
    assert studio.store.is_loaded()


def test_task_pipelines_share_the_base_modules(store):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from pipelines.tasks.denoise import build_pipeline

    base = store.base()
    assert store.base() is base  # loaded once
    for pipe in (
        build_pipeline(store, Txt2Img.from_fields(prompt="x", sampler="Euler a")),
        store.pipeline(StableDiffusionPipeline),
        store.pipeline(StableDiffusionImg2ImgPipeline),
    ):
        assert pipe.unet is base.unet
        assert pipe.vae is base.vae
        assert pipe.text_encoder is base.text_encoder
        assert pipe.tokenizer is base.tokenizer


def test_scheduler_choice_gives_the_job_its_own_scheduler(store):
    from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

    from pipelines.tasks.denoise import build_pipeline

    base_scheduler = store.base().scheduler
    euler = build_pipeline(store, Txt2Img.from_fields(prompt="x", sampler="Euler a"))
    karras = build_pipeline(store, Txt2Img.from_fields(prompt="x"))
    assert isinstance(euler.scheduler, EulerAncestralDiscreteScheduler)
    assert isinstance(karras.scheduler, DPMSolverMultistepScheduler)
    assert karras.scheduler.config.use_karras_sigmas
    assert store.base().scheduler is base_scheduler  # the shared one is never replaced


def test_system_info_lists_one_unet_with_its_size(store):
    store.base()
    info = store.system_info()
    assert info["attention"] == "sdpa"
    assert info["device"] == "cpu" and info["dtype"] == "fp32"
    unets = [r for r in info["resident"] if r["kind"] == "unet"]
    assert len(unets) == 1 and unets[0]["bytes"] > 1_000_000


def test_switching_models_frees_the_old_one(demo_models, tmp_path):
    studio = make_studio(demo_models, tmp_path / "out")
    old_unet = weakref.ref(studio.store.base().unet)
    studio.switch_model("danqing-demo-st")
    gc.collect()
    assert studio.store.current_ref == "danqing-demo-st"
    assert old_unet() is None
    assert len([r for r in studio.store.resident_models() if r["kind"] == "unet"]) == 1


def test_corrupt_model_is_refused_and_the_old_one_stays(demo_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(demo_models, models)
    weights = models / "checkpoints" / "danqing-demo-st" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    studio = make_studio(models, tmp_path / "out")
    base = studio.store.base()
    with pytest.raises(DanqingError) as info:
        studio.switch_model("danqing-demo-st")
    assert info.value.code == "model_file_corrupt"
    assert studio.store.current_ref == "danqing-demo-zh"
    assert studio.store.base() is base


def test_unknown_model_names_are_refused(store):
    for name in ("../../etc", "/etc/passwd", "nope", "alibaba-pai/not-listed"):
        with pytest.raises(DanqingError) as info:
            store.switch(name)
        assert info.value.code == "unknown_model"


def test_task_pipelines_keep_the_shared_weights_dtype(demo_models, tmp_path):
    """from_pipe casts to float32 unless told otherwise: a half-precision store must stay so."""
    import torch

    from pipelines.outputs import OutputWriter
    from pipelines.studio import Studio
    from pipelines.store.settings import EngineSettings
    from pipelines.store import ModelStore
    from pipelines.tasks.denoise import build_pipeline

    settings = EngineSettings(model="danqing-demo-zh", models_dir=demo_models, outputs_dir=tmp_path,
                              device="cpu", dtype="bf16", demo=True, allow_download=False)
    store = Studio(ModelStore(settings), OutputWriter(tmp_path)).store
    base = store.base()
    base.vae.to(torch.float32)  # as after an fp16 NaN decode: the upcast VAE must stay fp32
    pipe = build_pipeline(store, Txt2Img.from_fields(prompt="x"))
    assert pipe.unet is base.unet and base.unet.dtype == torch.bfloat16
    assert base.text_encoder.dtype == torch.bfloat16
    assert base.vae.dtype == torch.float32


def test_jobs_do_not_log_diffusers_false_fp32_warning(store):
    """diffusers 0.42 warns "should be kept in float32: []" on every dtype cast; from_pipe casts
    on every job. The store drops exactly that empty-list warning, nothing else."""
    import logging

    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    target = logging.getLogger("diffusers.models.modeling_utils")
    target.addHandler(handler)
    try:
        store.pipeline(StableDiffusionImg2ImgPipeline)  # a from_pipe, as every task job does
        store.base().unet.to(torch.float32)
        target.warning("There are modules in X that should be kept in float32: ['norm']. Casting ...")
    finally:
        target.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert messages == ["There are modules in X that should be kept in float32: ['norm']. Casting ..."]
