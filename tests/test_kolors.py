"""Kolors (可图, issue 32's first part) on the model-family seam, on the demo bundle's tiny Kolors
(ChatGLM3 encoder, SDXL U-Net): it reads Chinese itself (no translation), 文生图 gives plain
diffusers KolorsPipeline's pixels, 图生图, 高清修复 and the draft run, the modes diffusers lacks
for it are Chinese sentences, and the model list says what it is."""

import numpy as np
import pytest
import torch

from conftest import make_studio
from pipelines.demo.kolors import DEMO_KOLORS
from pipelines.errors import DanqingError
from pipelines.formats.families import KOLORS
from pipelines.requests import Img2Img, Inpaint, Txt2Img
from pipelines.tasks import txt2img

from test_edit import box_mask, photo, rgb

BASE = dict(prompt="雨后的西湖，水墨画", width=64, height=64, num_inference_steps=3, seed=5)


def base(**more) -> Txt2Img:
    return Txt2Img.from_fields({**BASE, **more})


@pytest.fixture(scope="module")
def kolors(demo_models, tmp_path_factory):
    return make_studio(demo_models, tmp_path_factory.mktemp("kolors-out"), model=DEMO_KOLORS)


def test_kolors_is_its_own_family_and_reads_chinese(kolors):
    assert kolors.store.family is KOLORS
    assert type(kolors.store.base()).__name__ == "KolorsPipeline"
    assert {c["ref"]: c["family"] for c in kolors.model_choices()}[DEMO_KOLORS] == "kolors"
    paths, info = kolors.txt2img(base())
    assert "translation" not in info["notices"]  # its ChatGLM encoder reads the Chinese itself


def test_txt2img_gives_plain_kolors_pixels(kolors):
    from diffusers import KolorsPipeline

    from pipelines.tasks.schedulers import make_scheduler

    ours = np.asarray(txt2img.run(kolors.store, base(sampler="Euler", guidance_scale=5.0, negative_prompt="模糊")).images[0])
    plain = KolorsPipeline.from_pretrained(kolors.store.choice(DEMO_KOLORS).source)
    plain.scheduler = make_scheduler("Euler", plain.scheduler.config)
    ref = plain(BASE["prompt"], negative_prompt="模糊", width=64, height=64, num_inference_steps=3, guidance_scale=5.0,
                generator=[torch.Generator("cpu").manual_seed(5)]).images[0]
    assert np.abs(np.asarray(ref).astype(int) - ours.astype(int)).max() <= 1
    other = np.asarray(txt2img.run(kolors.store, base(sampler="Euler", guidance_scale=5.0, prompt="竹林里的大熊猫")).images[0])
    assert not np.array_equal(ours, other)  # the Chinese words reach the picture


def test_img2img_hires_and_draft(kolors):
    edited = rgb(kolors.img2img(Img2Img.build(base(), photo(), 0.6))[0][0])
    assert edited.shape == (64, 64, 3)
    assert rgb(kolors.txt2img(base(hires_pass=True, hires_scale=1.5, hires_strength=0.5))[0][0]).shape == (96, 96, 3)
    paths, _ = kolors.txt2img(base(width=1024, height=1024, num_inference_steps=1, draft=True))
    assert rgb(paths[0]).shape == (512, 512, 3)  # SDXL-sized draft: short side 512, then x2


def test_the_modes_diffusers_lacks_for_kolors_are_chinese_sentences(kolors, tmp_path):
    from strings import error_text, load

    source = photo()
    with pytest.raises(DanqingError) as err:
        kolors.inpaint(Inpaint.build(Img2Img.build(base(), source, 0.9), box_mask(source.size, (30, 20, 62, 50)), 0))
    assert err.value.code == "family_no_inpaint"
    assert "Kolors 模型暂不支持局部重绘" in error_text(load("zh"), err.value.code, err.value.fields)
    from pipelines.requests import TrainLora
    from pipelines.tasks import train as training

    pictures = []
    for i in range(2):
        pictures.append(tmp_path / f"k{i}.png")
        photo(seed=i).save(pictures[-1])
    req = TrainLora.build("k", "x", [str(p) for p in pictures], None, steps=1, resolution=64)
    lora_dir = tmp_path / "lora"
    with pytest.raises(DanqingError) as err:
        training.train(kolors.store, req, lora_dir / "_run", lora_dir)
    assert err.value.code == "train_family_unsupported"


def test_a_kolors_lora_changes_the_picture_and_an_sdxl_one_is_named(kolors):
    """A U-Net LoRA in the layout Kolors' training script writes loads on Kolors (its U-Net is
    SDXL's, so a U-Net-only LoRA is not refused as SDXL's); switching it off restores the
    picture; an SDXL LoRA that adapts CLIP text encoders is a Chinese sentence."""
    from pipelines.demo.kolors import DEMO_KOLORS_LORA
    from pipelines.demo.sdxl import DEMO_SDXL_LORAS
    from pipelines.errors import ModelError

    plain = rgb(kolors.txt2img(base())[0][0])
    adapted = rgb(kolors.txt2img(base(loras=[[DEMO_KOLORS_LORA, 1.0]]))[0][0])
    assert np.abs(adapted - plain).mean() > 2
    assert np.array_equal(rgb(kolors.txt2img(base())[0][0]), plain)
    with pytest.raises(ModelError) as err:
        kolors.txt2img(base(loras=[[DEMO_SDXL_LORAS["kohya"], 1.0]]))
    assert err.value.code == "lora_family" and err.value.fields["base"] == "Kolors"
