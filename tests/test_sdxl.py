"""The SDXL family (issue 31) on the demo bundle's tiny SDXL: every mode a designer works in,
single files as Civitai ships them, the pooled and size conditioning, SDXL's LoRA and embedding
layouts, and the same pixels as plain diffusers' StableDiffusionXLPipeline for the same job."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_studio
from pipelines.demo.sdxl import DEMO_SDXL, DEMO_SDXL_INPAINT, DEMO_SDXL_SINGLE
from pipelines.demo.translator import DEMO_TRANSLATOR
from pipelines.errors import ModelError, ParamError
from pipelines.requests import Img2Img, Inpaint, Outpaint, Txt2Img
from pipelines.formats.families import SD1, SDXL
from pipelines.tasks import txt2img

from test_edit import box_mask, far_from, photo, rgb

BASE = dict(prompt="水墨山水，远山，小船", width=64, height=64, num_inference_steps=3, seed=11)


def base(**more) -> Txt2Img:
    return Txt2Img.from_fields({**BASE, **more})


@pytest.fixture(scope="module")
def xl(demo_models, tmp_path_factory):
    return make_studio(demo_models, tmp_path_factory.mktemp("xl-out"), model=DEMO_SDXL)


def test_the_store_knows_the_family_at_load_and_tasks_get_its_classes(xl):
    assert xl.store.family is SDXL
    pipe = xl.store.base()
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert xl.store.family.pipeline_class("inpaint").__name__ == "StableDiffusionXLInpaintPipeline"
    names = {row["kind"] for row in xl.store.resident_models()}
    assert {"unet", "vae", "text_encoder", "text_encoder_2"} <= names
    assert xl.store.system_info()["family"] == "sdxl"


def test_txt2img_gives_plain_diffusers_pixels(xl):
    """Same scheduler, same CPU noise, same size conditioning: the pixels of
    StableDiffusionXLPipeline on the same folder."""
    from diffusers import StableDiffusionXLPipeline

    from pipelines.tasks.schedulers import make_scheduler

    ours = np.asarray(txt2img.run(xl.store, base(sampler="Euler", guidance_scale=6.0, negative_prompt="模糊")).images[0])
    plain = StableDiffusionXLPipeline.from_pretrained(xl.store.choice(DEMO_SDXL).source)
    plain.scheduler = make_scheduler("Euler", plain.scheduler.config)
    ref = plain(BASE["prompt"], negative_prompt="模糊", width=64, height=64, num_inference_steps=3,
                guidance_scale=6.0, generator=[torch.Generator("cpu").manual_seed(11)]).images[0]
    assert np.abs(np.asarray(ref).astype(int) - ours.astype(int)).max() <= 1


def test_the_pooled_embedding_and_size_conditioning_reach_the_unet(xl):
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs.get("added_cond_kwargs") or {})

    handle = xl.store.base().unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        txt2img.run(xl.store, base(width=64, height=96, num_inference_steps=1))
    finally:
        handle.remove()
    assert seen["text_embeds"].shape[-1] == 32  # the tiny OpenCLIP-G's projection
    # A1111's defaults: original size = target size = the image, no crop.
    assert seen["time_ids"][0].tolist() == [96, 64, 0, 0, 96, 64]


def test_long_prompts_emphasis_and_clip_skip_go_through_both_encoders(xl):
    plain = np.asarray(txt2img.run(xl.store, base()).images[0]).astype(int)
    emphasis = np.asarray(txt2img.run(xl.store, base(prompt="(水墨山水:1.4)，远山，小船")).images[0]).astype(int)
    skipped = np.asarray(txt2img.run(xl.store, base(clip_skip=2)).images[0]).astype(int)
    long = txt2img.run(xl.store, base(prompt="，".join(["远山近水"] * 40)))
    assert not np.array_equal(plain, emphasis) and not np.array_equal(plain, skipped)
    assert long.notices["prompt_chunks"] >= 2


def test_our_encoding_of_a_plain_prompt_is_diffusers_own(xl):
    """The path for emphasis, embeddings and clip skip, given a prompt with none of them, gives
    the hidden states and pooled embedding diffusers' encode_prompt gives."""
    from pipelines.tasks.prompts import encode_long

    pipe = xl.store.base()
    found, _ = encode_long(pipe, "远山，小船", "模糊", pipe.device, always=True)
    ref = pipe.encode_prompt("远山，小船", device=pipe.device, num_images_per_prompt=1,
                             do_classifier_free_guidance=True, negative_prompt="模糊")
    for got, want in zip((found["prompt_embeds"], found["negative_prompt_embeds"], found["pooled_prompt_embeds"],
                          found["negative_pooled_prompt_embeds"]), ref):
        assert torch.allclose(got, want, atol=1e-5)


def test_sdxl_embeddings_with_clip_l_and_clip_g(xl, tmp_path):
    from safetensors.torch import save_file

    folder = xl.store.folders.folder("embeddings")
    path = folder / "xl-style.safetensors"
    torch.manual_seed(3)
    save_file({"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 32)}, str(path))
    try:
        rows = {e.name: e for e in xl.store.embeddings()}
        assert rows["xl-style"].problem is None and rows["xl-style"].vectors.shape == (2, 64)
        assert rows["demo-style"].problem == "width"  # an SD 1.x embedding does not fit SDXL
        result = txt2img.run(xl.store, base(prompt="xl-style，远山"))
        assert result.notices["embeddings"] == {"xl-style": "xl-style.safetensors"}
    finally:
        path.unlink()


def test_img2img_inpaint_and_outpaint(xl):
    source, box, blur = photo(), (30, 20, 62, 50), 2
    paths, info = xl.img2img(Img2Img.build(base(), source, 0.6))
    assert rgb(paths[0]).shape == (64, 64, 3) and info["mode"] == "img2img"
    request = Inpaint.build(Img2Img.build(base(), source, 0.9), box_mask(source.size, box), blur, "original")
    out = rgb(xl.inpaint(request)[0][0])
    far = far_from(box, source.size, 3 * blur + 1)
    assert np.array_equal(out[far], np.asarray(source).astype(int)[far])
    assert np.abs(out[~far_from(box, source.size, -4)] - np.asarray(source).astype(int)[~far_from(box, source.size, -4)]).mean() > 5
    grown = rgb(xl.outpaint(Outpaint.build(Img2Img.build(base(), source, 1.0), left=16))[0][0])
    assert grown.shape[:2] == (80, 112) and np.array_equal(grown[:, 16:], np.asarray(source).astype(int))


def test_hires_pass_and_draft(xl):
    paths, info = xl.txt2img(base(hires_pass=True, hires_scale=1.5, hires_strength=0.5))
    assert rgb(paths[0]).shape == (96, 96, 3)
    paths, info = xl.txt2img(base(width=1024, height=1024, num_inference_steps=1, draft=True))
    with Image.open(paths[0]) as image:
        # SDXL's draft is a quarter of its one-megapixel size, not SD 1.x's
        assert image.size == (512, 512)


def test_a_9_channel_sdxl_inpainting_model(demo_models, tmp_path):
    own = make_studio(demo_models, tmp_path / "out", model=DEMO_SDXL_INPAINT)
    assert own.store.family is SDXL and own.store.base().unet.config.in_channels == 9
    source, box = photo(), (30, 20, 62, 50)
    out = rgb(own.inpaint(Inpaint.build(Img2Img.build(base(), source, 1.0), box_mask(source.size, box), 0))[0][0])
    far = far_from(box, source.size, 1)
    assert np.array_equal(out[far], np.asarray(source).astype(int)[far])
    assert rgb(own.txt2img(base())[0][0]).shape == (64, 64, 3)


def test_the_single_file_gives_the_folders_pixels_and_infotext_as_a1111_writes_it(demo_models, tmp_path):
    own = make_studio(demo_models, tmp_path / "out", model=DEMO_SDXL_SINGLE)
    assert own.store.family is SDXL
    folder = make_studio(demo_models, tmp_path / "out2", model=DEMO_SDXL)
    a = rgb(own.txt2img(base())[0][0])
    b = rgb(folder.txt2img(base())[0][0])
    assert np.abs(a - b).mean() < 2  # the file is fp16, the folder fp32
    paths, _ = own.txt2img(base())
    with Image.open(paths[0]) as image:
        text = image.info["parameters"]
    assert "Model: danqing-demo-xl-single" in text and "Model hash: " in text and "Size: 64x64" in text


def test_switching_sd1_to_sdxl_and_back_keeps_one_base(demo_models, tmp_path):
    own = make_studio(demo_models, tmp_path / "out")
    first = rgb(own.txt2img(base())[0][0])
    own.switch_model(DEMO_SDXL)
    assert own.store.family is SDXL
    own.txt2img(base())
    own.switch_model("danqing-demo-zh")
    assert own.store.family is SD1 and getattr(own.store.base(), "text_encoder_2", None) is None
    assert np.array_equal(first, rgb(own.txt2img(base())[0][0]))


def test_v_prediction_single_files_run_with_zero_terminal_snr(demo_models, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from pipelines.demo.sdxl import save_sdxl_single_file
    from pipelines.formats.checkpoint import load_single_file

    pipe = StableDiffusionXLPipeline.from_pretrained(demo_models / "checkpoints" / DEMO_SDXL)
    path = save_sdxl_single_file(pipe, tmp_path / "noob-vpred.safetensors", v_pred=True)
    loaded = load_single_file(path, torch.float32, lambda vocab: None)
    config = loaded.scheduler.config
    assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
    assert config.timestep_spacing == "trailing"


def test_a_refiner_half_is_refused_in_chinese(tmp_path):
    from safetensors.torch import save_file

    from pipelines.formats.checkpoint import load_single_file

    path = tmp_path / "refiner.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(1),
               "conditioner.embedders.0.model.token_embedding.weight": torch.zeros(1)}, str(path))
    with pytest.raises(ModelError) as err:
        load_single_file(path, torch.float32, lambda vocab: None)
    assert err.value.code == "checkpoint_incomplete"


# LoRAs ----------------------------------------------------------------------------------------
def _adapted(store, component: str) -> int:
    """How many of ``component``'s modules carry a LoRA adapter."""
    return sum(1 for _, m in getattr(store.base(), component).named_modules() if hasattr(m, "lora_A") and m.lora_A)


def test_kohya_and_diffusers_sdxl_loras_reach_both_text_encoders(xl):
    from pipelines.demo.sdxl import DEMO_SDXL_LORAS

    plain = np.asarray(txt2img.run(xl.store, base()).images[0]).astype(int)
    for kind in ("kohya", "peft"):
        name = DEMO_SDXL_LORAS[kind]
        got = np.asarray(txt2img.run(xl.store, base(loras=[[name, 1.0]])).images[0]).astype(int)
        assert not np.array_equal(plain, got), kind
        assert _adapted(xl.store, "text_encoder") and _adapted(xl.store, "text_encoder_2") and _adapted(xl.store, "unet")
    # LoRA off: the base model's own pixels again
    assert np.array_equal(plain, np.asarray(txt2img.run(xl.store, base()).images[0]).astype(int))


def test_the_kohya_sdxl_lora_is_listed_with_its_metadata(xl):
    from pipelines.tasks.lora import list_loras

    rows = {row["name"]: row for row in list_loras(xl.store)}
    assert rows["danqing-demo-xl-kohya.safetensors"]["base_model"] == "sdxl_base_v1-0"
    assert rows["danqing-demo-xl-kohya.safetensors"]["trigger_words"][0] == "gongbi"
    lightning = rows["sdxl_lightning_4step_lora-tiny.safetensors"]["fewstep"]
    assert lightning["method"] == "lightning" and lightning["steps"] == 4 and lightning["sampler"] == "Euler"


def test_a_lora_of_the_other_family_is_named_in_chinese(xl, studio):
    from strings import error_text, load

    with pytest.raises(ModelError) as err:
        txt2img.run(xl.store, base(loras=[["danqing-demo-kohya.safetensors", 1.0]]))
    assert err.value.code == "lora_family" and err.value.fields["base"] == "SDXL"
    text = error_text(load("zh"), err.value.code, err.value.fields)
    assert "SDXL" in text and "SD 1.x" in text and "未加载" in text
    with pytest.raises(ModelError) as err:
        txt2img.run(studio.store, base(loras=[["danqing-demo-xl-kohya.safetensors", 1.0]]))
    assert err.value.code == "lora_family" and err.value.fields["lora"] == "SDXL"


def test_lightning_lora_at_its_published_settings(xl):
    result = txt2img.run(xl.store, base(loras=[["sdxl_lightning_4step_lora-tiny.safetensors", 1.0]],
                                        sampler="Euler", schedule_type="SGM Uniform", guidance_scale=0,
                                        num_inference_steps=4))
    assert np.asarray(result.images[0]).std() > 0


# ControlNet ------------------------------------------------------------------------------------
def _unit(tmp_path, model, kind="canny", weight=2.0, **more):
    path = tmp_path / f"control-{kind}.png"
    photo(64, 64).save(path)
    return {"kind": kind, "image": str(path), "model": model, "weight": weight, **more}


def test_sdxl_controlnet_and_union_guide_txt2img_and_img2img(xl, tmp_path):
    from pipelines.demo.controlnet import DEMO_XL_CANNY, DEMO_XL_UNION
    from pipelines.requests import Control

    plain = rgb(xl.txt2img(base())[0][0])
    canny, info = xl.control(Control.build(base(), [_unit(tmp_path, DEMO_XL_CANNY)]))
    assert not np.array_equal(plain, rgb(canny[0])) and canny[1].name.endswith("-canny-map.png")
    union_canny = rgb(xl.control(Control.build(base(), [_unit(tmp_path, DEMO_XL_UNION)]))[0][0])
    union_depth = rgb(xl.control(Control.build(base(), [_unit(tmp_path, DEMO_XL_UNION, "depth", is_map=True)]))[0][0])
    assert not np.array_equal(plain, union_canny)
    assert not np.array_equal(union_canny, union_depth)  # the control type reaches the model
    both = xl.control(Control.build(base(), [_unit(tmp_path, DEMO_XL_UNION),
                                             _unit(tmp_path, DEMO_XL_UNION, "depth", is_map=True)]))
    assert rgb(both[0][0]).shape == (64, 64, 3)
    edited = rgb(xl.img2img(Img2Img.build(base(), photo(), 0.7, units=[_unit(tmp_path, DEMO_XL_UNION)]))[0][0])
    assert edited.shape == (64, 64, 3)


def test_controlnets_of_the_other_family_are_refused_in_chinese(xl, studio, tmp_path):
    from pipelines.demo.controlnet import DEMO_CANNY, DEMO_XL_CANNY
    from pipelines.requests import Control

    with pytest.raises(ModelError) as err:
        xl.control(Control.build(base(), [_unit(tmp_path, DEMO_CANNY)]))
    assert err.value.code == "controlnet_family" and err.value.fields["base"] == "SDXL"
    with pytest.raises(ModelError) as err:
        studio.control(Control.build(base(), [_unit(tmp_path, DEMO_XL_CANNY)]))
    assert err.value.code == "controlnet_family" and err.value.fields["net"] == "SDXL"


def test_live_previews_use_sdxls_own_latent_colours(xl):
    from pipelines.tasks.preview import preview_decoder

    decode = preview_decoder(xl.store)
    assert torch.allclose(decode.keywords["factors"], torch.tensor(SDXL.latent_rgb))
    shown = []
    txt2img.run(xl.store, base(num_inference_steps=3), on_preview=lambda image, step, total: shown.append(image))
    # a preview every second at most: a 3-step tiny job may show none, never a broken one
    assert all(image.size[0] > 0 for image in shown)


# Training --------------------------------------------------------------------------------------
def test_an_sdxl_lora_trained_here_is_kohya_sdxl_and_loads_back(demo_models, tmp_path):
    """U-Net only by default (cached embeddings of both encoders, pooled and size conditioning),
    then with the text encoders; both files load through our loader and change the picture."""
    import shutil

    from pipelines.formats.lora import read_metadata
    from pipelines.requests import TrainLora
    from pipelines.tasks import train as training

    models = tmp_path / "models"
    for kind in ("checkpoints", "lora", "translators"):
        shutil.copytree(demo_models / kind, models / kind)
    own = make_studio(models, tmp_path / "out", model=DEMO_SDXL)
    paths = []
    for i in range(2):
        picture = Image.new("RGB", (80, 64), (30, 60, 200))
        picture.paste((220, 40, 40), (10 + 8 * i, 12, 42 + 8 * i, 44))
        paths.append(str(tmp_path / f"p{i}.png"))
        picture.save(paths[-1])
    lora_dir = own.store.folders.folder("lora")
    plain = rgb(own.txt2img(base())[0][0])
    for name, te in (("xl-unet", False), ("xl-te", True)):
        req = TrainLora.build(name, "redsq", paths, ["红色方块"] * 2, steps=4, rank=4, alpha=4, learning_rate=5e-3,
                              resolution=64, seed=3, train_text_encoder=te, gradient_checkpointing=True, preview=False)
        result = training.train(own.store, req, tmp_path / name, lora_dir)
        assert result.steps_done == 4 and all(np.isfinite(result.losses))
        meta = read_metadata(result.path)
        assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
        # CLIP learns from English: the Chinese captions went through the demo translator
        assert result.translator == DEMO_TRANSLATOR
        tags = json.loads(meta["ss_tag_frequency"])["danqing"]
        assert "redsq" in tags and not any("\u4e00" <= c <= "\u9fff" for tag in tags for c in tag), tags
        assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
        from safetensors import safe_open

        with safe_open(str(result.path), "pt") as f:
            keys = list(f.keys())
        assert any(k.startswith("lora_unet_") for k in keys)
        assert any(k.startswith("lora_te2_") for k in keys) == te and not any(k.startswith("lora_te_") for k in keys)
        assert not np.array_equal(plain, rgb(own.txt2img(base(loras=[[result.path.name, 1.0]]))[0][0]))
    # the base is as it was: no adapter left, the same picture
    assert np.array_equal(plain, rgb(own.txt2img(base())[0][0]))
    # Without a translator, Chinese captions on SDXL are a Chinese sentence; nothing is trained.
    shutil.rmtree(models / "translators")
    req = TrainLora.build("xl-none", "redsq", paths, ["红色方块"] * 2, steps=4, rank=4, resolution=64, preview=False)
    with pytest.raises(ParamError) as err:
        training.train(own.store, req, tmp_path / "xl-none", lora_dir)
    assert err.value.code == "train_translator_missing" and not (lora_dir / "xl-none.safetensors").exists()
