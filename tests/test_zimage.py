"""Z-Image (造相, issue 33) on the model-family seam, on the demo bundle's tiny Z-Image (Qwen3
encoder, diffusion transformer, 16-channel autoencoder): the transformer is the shared denoiser,
文生图 gives plain diffusers ZImagePipeline's pixels, a quoted Chinese title reaches the encoder
as typed, 图生图 / 局部重绘 / 扩图 / 高清修复 / draft run, Turbo is recognised by 极速, previews
read 16-channel latents, and switching to and from an SD model keeps one denoiser."""

import gc
import weakref

import numpy as np
import pytest
import torch
from conftest import make_studio
from PIL import Image
from test_edit import box_mask, far_from, photo, rgb

from pipelines.demo.zimage import DEMO_ZIMAGE
from pipelines.formats.families import SD1, ZIMAGE
from pipelines.requests import Img2Img, Inpaint, Outpaint, Txt2Img
from pipelines.tasks import txt2img

TITLE = "海报，标题“丹青”，水墨山水"
BASE = dict(prompt=TITLE, width=64, height=64, num_inference_steps=3, seed=7, sampler="Euler", guidance_scale=0.0)


def base(**more) -> Txt2Img:
    return Txt2Img.from_fields({**BASE, **more})


@pytest.fixture(scope="module")
def zi(demo_models, tmp_path_factory):
    return make_studio(demo_models, tmp_path_factory.mktemp("zimage-out"), model=DEMO_ZIMAGE)


def encoder_inputs(store):
    """Record the token ids the Qwen3 encoder reads, decoded back to text."""
    seen = []
    pipe = store.base()

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        seen.extend(pipe.tokenizer.batch_decode(ids, skip_special_tokens=True))

    return seen, pipe.text_encoder.register_forward_pre_hook(hook, with_kwargs=True)


def test_z_image_is_a_family_whose_denoiser_is_a_transformer(zi):
    store = zi.store
    assert store.family is ZIMAGE and type(store.base()).__name__ == "ZImagePipeline"
    assert type(store.denoiser()).__name__ == "ZImageTransformer2DModel"
    assert {c["ref"]: c["family"] for c in zi.model_choices()}[DEMO_ZIMAGE] == "zimage"
    kinds = {row["kind"] for row in store.resident_models()}
    assert {"transformer", "vae", "text_encoder"} <= kinds and "unet" not in kinds
    info = zi.system_info()
    assert info["family"] == "zimage" and info["attention"] == "sdpa"
    for task in ("img2img", "inpaint", "controlnet", "controlnet_inpaint"):
        assert store.family.pipeline_class(task).__name__.startswith("ZImage")


@pytest.mark.parametrize("cfg", [0.0, 4.0])
def test_txt2img_gives_plain_zimage_pixels(zi, cfg):
    """Turbo's job (no CFG) and Base's (CFG with a negative prompt): the pixels of plain
    diffusers' ZImagePipeline on the same folder, same seed."""
    from diffusers import ZImagePipeline

    ours = np.asarray(txt2img.run(zi.store, base(guidance_scale=cfg, negative_prompt="模糊")).images[0])
    plain = ZImagePipeline.from_pretrained(zi.store.choice(DEMO_ZIMAGE).source)
    ref = plain(TITLE, negative_prompt="模糊", width=64, height=64, num_inference_steps=3, guidance_scale=cfg,
                generator=[torch.Generator("cpu").manual_seed(7)]).images[0]
    assert np.abs(np.asarray(ref).astype(int) - ours.astype(int)).max() <= 1
    other = np.asarray(txt2img.run(zi.store, base(guidance_scale=cfg, prompt="海报，标题“山水”，水墨山水")).images[0])
    assert not np.array_equal(ours, other)  # the quoted words reach the picture


def test_a_quoted_chinese_title_reaches_the_encoder_as_typed(zi):
    """Quotes (full-width and ASCII) survive; emphasis syntax around them is read, not eaten;
    no translation (Qwen3 reads Chinese)."""
    seen, hook = encoder_inputs(zi.store)
    try:
        paths, info = zi.txt2img(base(prompt='海报，标题“丹青”，副标题"水墨"，(留白:1.2)'))
    finally:
        hook.remove()
    assert any('标题“丹青”' in text and '副标题"水墨"' in text and "留白" in text for text in seen), seen
    assert not any("(留白:1.2)" in text for text in seen)
    assert "translation" not in info["notices"]
    with Image.open(paths[0]) as image:
        assert '标题“丹青”，副标题"水墨"' in image.info["parameters"]


def test_its_own_euler_and_the_infotext_say_what_ran(zi):
    paths, info = zi.txt2img(base(sampler="DPM++ 2M Karras"))
    assert info["notices"]["sampler"] == {"asked": "DPM++ 2M Karras", "used": "Euler", "family": "Z-Image"}
    with Image.open(paths[0]) as image:
        text = image.info["parameters"]
    assert "Sampler: Euler" in text and f"Model: {DEMO_ZIMAGE}" in text
    assert "CFG scale: 0.0" in text


def test_a_clip_skip_is_said_unused_and_left_out_of_the_png(zi):
    """Qwen3 is not CLIP: clip skip 3 (from the API or a PNG's parameters) is not used — the same
    picture as without it, said in the notices, not written as "Clip skip" in the PNG."""
    plain_paths, _ = zi.txt2img(base())
    paths, info = zi.txt2img(base(clip_skip=3))
    assert info["notices"]["clip_skip"] == {"asked": 3, "family": "Z-Image"}
    with Image.open(paths[0]) as image:
        assert "Clip skip" not in image.info["parameters"]
    assert np.array_equal(rgb(paths[0]), rgb(plain_paths[0]))


def test_img2img_inpaint_and_outpaint(zi):
    source, box, blur = photo(), (30, 20, 62, 50), 2
    paths, info = zi.img2img(Img2Img.build(base(), source, 0.6))
    assert rgb(paths[0]).shape == (64, 64, 3) and info["mode"] == "img2img"
    out = rgb(zi.inpaint(Inpaint.build(Img2Img.build(base(), source, 0.9), box_mask(source.size, box), blur,
                                       "original"))[0][0])
    far = far_from(box, source.size, 3 * blur + 1)
    assert np.array_equal(out[far], np.asarray(source).astype(int)[far])
    inside = ~far_from(box, source.size, -4)
    assert np.abs(out[inside] - np.asarray(source).astype(int)[inside]).mean() > 5
    grown = rgb(zi.outpaint(Outpaint.build(Img2Img.build(base(), source, 1.0), left=16))[0][0])
    assert grown.shape[:2] == (80, 112) and np.array_equal(grown[:, 16:], np.asarray(source).astype(int))


def test_hires_pass_in_latent_space_and_draft(zi):
    paths, info = zi.txt2img(base(hires_pass=True, hires_scale=1.5, hires_strength=0.5))
    assert rgb(paths[0]).shape == (96, 96, 3)
    paths, info = zi.txt2img(base(width=1024, height=1024, num_inference_steps=1, draft=True))
    with Image.open(paths[0]) as image:
        assert image.size == (512, 512)  # a one-megapixel family: short side 512, then x2


def test_turbo_is_recognised_by_jisu(zi):
    found = zi.fast_settings()
    assert found["lora"] is None and found["fewstep"]["method"] == "zimage-turbo"
    assert (found["fewstep"]["sampler"], found["fewstep"]["steps"], found["fewstep"]["cfg"]) == ("Euler", 8, 0.0)


def test_live_previews_read_16_channel_latents(zi):
    from pipelines.tasks.preview import preview_decoder

    decode = preview_decoder(zi.store)
    assert decode.keywords["factors"].shape == (16, 3)
    image = decode(torch.zeros(1, 16, 8, 8))
    # zero latents show the family's bias colour, not black: the bias is applied
    assert image.size == (64, 64) and image.getpixel((3, 3)) != (127, 127, 127)
    shown = []
    txt2img.run(zi.store, base(num_inference_steps=3), on_preview=lambda image, step, total: shown.append(image))
    assert all(image.size[0] > 0 for image in shown)


def test_switching_between_sd_and_z_image_keeps_one_denoiser(demo_models, tmp_path):
    own = make_studio(demo_models, tmp_path / "out")
    first = rgb(own.txt2img(Txt2Img.from_fields(prompt="山水", width=64, height=64, num_inference_steps=2, seed=3))[0][0])
    unet = weakref.ref(own.store.denoiser())
    own.switch_model(DEMO_ZIMAGE)
    gc.collect()
    assert own.store.family is ZIMAGE and unet() is None  # the U-Net is freed
    transformer = weakref.ref(own.store.denoiser())
    own.txt2img(base())
    own.switch_model("danqing-demo-zh")
    gc.collect()
    assert own.store.family is SD1 and transformer() is None
    again = rgb(own.txt2img(Txt2Img.from_fields(prompt="山水", width=64, height=64, num_inference_steps=2, seed=3))[0][0])
    assert np.array_equal(first, again)


def _unit(tmp_path, model, weight=1.0, **more):
    path = tmp_path / "control.png"
    photo(64, 64).save(path)
    return {"kind": "canny", "image": str(path), "model": model, "weight": weight, **more}


def test_the_controlnet_union_guides_txt2img_and_inpainting_from_its_folder_or_single_file(zi, tmp_path):
    from pipelines.demo.zimage import (
        DEMO_ZIMAGE_CONTROLNET,
        DEMO_ZIMAGE_CONTROLNET_FILE,
    )
    from pipelines.requests import Control

    plain = rgb(zi.txt2img(base())[0][0])
    folder, info = zi.control(Control.build(base(), [_unit(tmp_path, DEMO_ZIMAGE_CONTROLNET)]))
    single = rgb(zi.control(Control.build(base(), [_unit(tmp_path, DEMO_ZIMAGE_CONTROLNET_FILE)]))[0][0])
    assert not np.array_equal(plain, rgb(folder[0])) and folder[1].name.endswith("-canny-map.png")
    assert np.array_equal(rgb(folder[0]), single)  # alibaba-pai's single file reads as its folder
    source, box = photo(), (30, 20, 62, 50)
    request = Inpaint.build(Img2Img.build(base(), source, 0.8, units=[_unit(tmp_path, DEMO_ZIMAGE_CONTROLNET)]),
                            box_mask(source.size, box), 0)
    paths, info = zi.inpaint(request)
    far = far_from(box, source.size, 1)
    assert np.array_equal(rgb(paths[0])[far], np.asarray(source).astype(int)[far])
    assert info["notices"]["full_strength"] == "Z-Image"  # it repaints from noise: said, not hidden


def test_a_z_image_controlnet_window_runs_the_net_only_on_its_steps(zi, tmp_path):
    """引导开始/结束 on a Z-Image ControlNet (diffusers' Z-Image pipelines have no window): the net
    runs on the window's steps only — by diffusers' rule, steps 2–5 of 6 for 0.25–0.9 — and
    the picture lies between the plain one and the fully guided one; the next job without a
    window is guided on every step again."""
    from pipelines.demo.zimage import DEMO_ZIMAGE_CONTROLNET
    from pipelines.requests import Control
    from pipelines.tasks.controlnet import load_controlnet

    six = base(num_inference_steps=6)
    plain = rgb(zi.txt2img(six)[0][0])
    full = rgb(zi.control(Control.build(six, [_unit(tmp_path, DEMO_ZIMAGE_CONTROLNET)]))[0][0])
    net = load_controlnet(zi.store, DEMO_ZIMAGE_CONTROLNET)
    ran = []
    # the net's first control block runs once for each step the net really runs
    hook = net.control_layers[0].register_forward_pre_hook(lambda module, args: ran.append(1))
    try:
        windowed = rgb(zi.control(Control.build(six, [_unit(tmp_path, DEMO_ZIMAGE_CONTROLNET, guidance_start=0.25,
                                                            guidance_end=0.9)]))[0][0])
        assert len(ran) == 3  # k/6 >= 0.25 and (k+1)/6 <= 0.9: k = 2, 3, 4
        ran.clear()
        again = rgb(zi.control(Control.build(six, [_unit(tmp_path, DEMO_ZIMAGE_CONTROLNET)]))[0][0])
        assert len(ran) == 6
    finally:
        hook.remove()
    assert np.array_equal(again, full)
    assert not np.array_equal(windowed, full) and not np.array_equal(windowed, plain)


def test_what_z_image_controlnets_cannot_do_is_said_in_chinese(zi, studio, tmp_path):
    from pipelines.demo.controlnet import DEMO_CANNY
    from pipelines.demo.zimage import DEMO_ZIMAGE_CONTROLNET
    from pipelines.errors import DanqingError
    from pipelines.requests import Control
    from strings import error_text, load

    zh = load("zh")
    cases = [
        (zi, [_unit(tmp_path, DEMO_ZIMAGE_CONTROLNET), _unit(tmp_path, DEMO_ZIMAGE_CONTROLNET)], "controlnet_one_unit"),
        (zi, [_unit(tmp_path, DEMO_CANNY)], "controlnet_family"),  # an SD 1.x ControlNet on Z-Image
        (studio, [_unit(tmp_path, DEMO_ZIMAGE_CONTROLNET)], "controlnet_family"),  # and the other way round
    ]
    for owner, units, code in cases:
        with pytest.raises(DanqingError) as err:
            owner.control(Control.build(Txt2Img.from_fields(prompt="山水", width=64, height=64, num_inference_steps=2),
                                        units))
        assert err.value.code == code
        assert all(ord(ch) < 0x4E00 for ch in err.value.code) and any(
            "\u4e00" <= ch <= "\u9fff" for ch in error_text(zh, err.value.code, err.value.fields))
    with pytest.raises(DanqingError) as err:  # no ControlNet 图生图 pipeline for Z-Image in diffusers
        zi.img2img(Img2Img.build(base(), photo(), 0.7, units=[_unit(tmp_path, DEMO_ZIMAGE_CONTROLNET)]))
    assert err.value.code == "controlnet_no_img2img"
    ran = []  # 高清修复 with a ControlNet: its second pass is ControlNet 图生图, refused before the first runs
    hook = zi.store.denoiser().register_forward_pre_hook(lambda module, args: ran.append(1))
    try:
        with pytest.raises(DanqingError) as err:
            zi.control(Control.build(base(hires_pass=True, hires_upscaler="latent", hires_scale=2),
                                     [_unit(tmp_path, DEMO_ZIMAGE_CONTROLNET)]))
    finally:
        hook.remove()
    assert err.value.code == "controlnet_no_img2img" and ran == []
    assert "高清修复" in error_text(zh, err.value.code, err.value.fields)


def test_styles_keep_a_quoted_title():
    from extensions import Style, apply_styles

    prompt, negative = apply_styles(TITLE, "", [Style("海报", "{prompt}，国潮风格", "模糊"), Style("水墨", "留白")])
    assert "标题“丹青”" in prompt and prompt.startswith("海报，标题“丹青”")


# ComfyUI's split files and GGUF -----------------------------------------------------------------
def test_comfyui_split_files_give_the_folders_pixels(demo_models, zi, tmp_path):
    """The transformer, Qwen3 and VAE files from a ComfyUI install (``--comfyui-dir``) are
    assembled without the hub and give the diffusers folder's pixels; 系统信息 names the three."""
    import shutil

    from pipelines.demo.zimage import DEMO_FLUX_VAE, DEMO_QWEN_SPLIT, DEMO_ZIMAGE_SPLIT
    from pipelines.store import EngineSettings, ModelFolders, ModelStore
    from pipelines.store.folders import install_folders

    comfy = tmp_path / "ComfyUI"
    for folder, name in (("diffusion_models", DEMO_ZIMAGE_SPLIT), ("text_encoders", DEMO_QWEN_SPLIT), ("vae", DEMO_FLUX_VAE)):
        (comfy / "models" / folder).mkdir(parents=True)
        shutil.copy(demo_models / folder / name, comfy / "models" / folder / name)
    own = tmp_path / "models"
    (own / "checkpoints").mkdir(parents=True)  # the tokenizer comes from an installed Z-Image folder
    shutil.copytree(demo_models / "checkpoints" / DEMO_ZIMAGE, own / "checkpoints" / DEMO_ZIMAGE)
    extra = install_folders("comfyui", comfy)
    store = ModelStore(EngineSettings(model=DEMO_ZIMAGE_SPLIT, models_dir=own, extra_model_dirs=extra, demo=True),
                       ModelFolders(own, extra))
    assert store.choice(DEMO_ZIMAGE_SPLIT).kind == "split" and store.family is ZIMAGE
    split = np.asarray(txt2img.run(store, base()).images[0])
    folder = np.asarray(txt2img.run(zi.store, base()).images[0])
    assert np.array_equal(split, folder)
    assert store.system_info()["split_files"] == {"transformer": DEMO_ZIMAGE_SPLIT, "text_encoder": DEMO_QWEN_SPLIT,
                                                  "vae": DEMO_FLUX_VAE}


def test_a_split_transformer_without_its_text_encoder_is_a_chinese_error(demo_models, tmp_path):
    import shutil

    from pipelines.demo.zimage import DEMO_ZIMAGE_SPLIT
    from pipelines.errors import ModelError
    from pipelines.store import EngineSettings, ModelStore
    from strings import error_text, load

    (tmp_path / "diffusion_models").mkdir()
    shutil.copy(demo_models / "diffusion_models" / DEMO_ZIMAGE_SPLIT, tmp_path / "diffusion_models")
    store = ModelStore(EngineSettings(model=DEMO_ZIMAGE_SPLIT, models_dir=tmp_path, demo=True))
    with pytest.raises(ModelError) as err:
        store.base()
    assert err.value.code == "zimage_text_encoder_missing"
    assert "qwen_3_4b.safetensors" in error_text(load("zh"), err.value.code, err.value.fields)


def test_a_gguf_transformer_runs_quantised_and_close_to_the_folder(demo_models, zi):
    from pipelines.demo.zimage import DEMO_ZIMAGE_GGUF
    from pipelines.store import EngineSettings, ModelStore
    from pipelines.store.cache import module_bytes

    store = ModelStore(EngineSettings(model=DEMO_ZIMAGE_GGUF, models_dir=demo_models, demo=True))
    assert store.family is ZIMAGE
    gguf = np.asarray(txt2img.run(store, base()).images[0]).astype(int)
    folder = np.asarray(txt2img.run(zi.store, base()).images[0]).astype(int)
    assert np.abs(gguf - folder).mean() < 8  # Q8_0: close, not equal
    assert module_bytes(store.denoiser()) < module_bytes(zi.store.denoiser()) / 2
    assert store.system_info()["memory"]["mode"] == "gguf"  # 系统信息 says it


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_1"])
def test_smaller_gguf_types_run_through_the_same_dequantisers(demo_models, zi, tmp_path, qtype):
    """4- and 5-bit GGUFs (Q4_0, Q5_1, written by the gguf package as city96's are) load from
    diffusion_models/ and generate: fewer bytes than Q8_0, a picture nearer the folder's than
    another seed's is."""
    import shutil

    from pipelines.demo.zimage import DEMO_ZIMAGE_GGUF, save_demo_zimage_gguf, transformer_to_original
    from pipelines.store import EngineSettings, ModelStore
    from pipelines.store.cache import module_bytes

    for kind in ("text_encoders", "vae", "checkpoints"):
        shutil.copytree(demo_models / kind, tmp_path / kind)
    name = f"z-image-demo-{qtype}.gguf"
    (tmp_path / "diffusion_models").mkdir()
    save_demo_zimage_gguf(transformer_to_original(zi.store.denoiser()), tmp_path / "diffusion_models" / name, qtype)
    store = ModelStore(EngineSettings(model=name, models_dir=tmp_path, demo=True))
    small = np.asarray(txt2img.run(store, base()).images[0]).astype(int)
    assert store.system_info()["memory"]["mode"] == "gguf"
    q8 = ModelStore(EngineSettings(model=DEMO_ZIMAGE_GGUF, models_dir=demo_models, demo=True))
    assert module_bytes(store.denoiser()) < module_bytes(q8.denoiser())
    folder = np.asarray(txt2img.run(zi.store, base()).images[0]).astype(int)
    other = np.asarray(txt2img.run(zi.store, base(seed=8)).images[0]).astype(int)
    assert np.abs(small - folder).mean() < np.abs(other - folder).mean()


# Memory modes --------------------------------------------------------------------------------------
def test_memory_modes_are_chosen_from_the_free_memory_and_shown(zi):
    from pipelines.store import memory
    from strings import load
    from ui.system_view import system_markdown

    pipe, family = zi.store.base(), ZIMAGE
    main, encoders = memory.parts_bytes(pipe, family)
    cuda = torch.device("cuda")
    assert memory.choose("auto", cuda, main + encoders + memory.HEADROOM, pipe, family) == ("resident", "fits")
    assert memory.choose("auto", cuda, main + memory.HEADROOM, pipe, family) == ("park", "encoders_parked")
    assert memory.choose("auto", cuda, main, pipe, family) == ("fp8", "denoiser_fp8")
    assert memory.choose("auto", torch.device("cpu"), None, pipe, family) == ("resident", "not_gpu")
    assert memory.choose("park", torch.device("cpu"), None, pipe, family) == ("park", "asked")
    info = zi.system_info()
    assert info["memory"] == {"mode": "resident", "why": "not_gpu", "gguf": False, "parked": []}
    assert "显存模式 | 全部常驻" in system_markdown(load("zh"), info)


def test_parked_and_fp8_modes_give_the_same_picture(demo_models, zi):
    """park: the Qwen3 encoder leaves after each prompt (here the CPU is both places: the hooks
    run, the picture is the resident one); fp8: the transformer blocks' matrices stored in
    float8 (half of bf16, a quarter of fp32), the picture close."""
    from pipelines.store import EngineSettings, ModelStore
    from pipelines.store.cache import module_bytes

    resident = np.asarray(txt2img.run(zi.store, base()).images[0]).astype(int)
    parked = ModelStore(EngineSettings(model=DEMO_ZIMAGE, models_dir=demo_models, demo=True, memory_mode="park"))
    assert np.array_equal(np.asarray(txt2img.run(parked, base()).images[0]).astype(int), resident)
    assert parked.system_info()["memory"]["parked"] == ["text_encoder"]
    fp8 = ModelStore(EngineSettings(model=DEMO_ZIMAGE, models_dir=demo_models, demo=True, memory_mode="fp8"))
    out = np.asarray(txt2img.run(fp8, base()).images[0]).astype(int)
    assert np.abs(out - resident).mean() < 12
    blocks = [p for n, p in fp8.denoiser().named_parameters()
              if n.startswith(("layers.", "noise_refiner.", "context_refiner.")) and p.dim() == 2]
    assert blocks and all(p.dtype == torch.float8_e4m3fn for p in blocks)  # every block's matrices
    assert module_bytes(fp8.denoiser()) < module_bytes(zi.store.denoiser())


def test_an_svdquant_model_off_cuda_is_a_chinese_sentence(demo_models, tmp_path):
    import json
    import shutil

    from pipelines.errors import ModelError
    from pipelines.store import EngineSettings, ModelStore
    from strings import error_text, load

    folder = tmp_path / "checkpoints" / "svdq-int4_r32-z-image-turbo"
    shutil.copytree(demo_models / "checkpoints" / DEMO_ZIMAGE, folder)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "nunchaku_lite", "compute_dtype": "bfloat16",
                                     "svdq_w4a4": {"precision": "int4", "group_size": 64, "rank": 32,
                                                   "targets": ["layers.0.attention.to_q"]}}
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    store = ModelStore(EngineSettings(model=folder.name, models_dir=tmp_path, demo=True))
    with pytest.raises(ModelError) as err:
        store.base()
    assert err.value.code == "svdquant_unavailable"
    assert "NVIDIA" in error_text(load("zh"), err.value.code, err.value.fields)


# LoRAs -----------------------------------------------------------------------------------------------
def test_a_z_image_lora_in_every_published_layout_means_the_same(zi):
    """diffusers/PEFT, ComfyUI/ai-toolkit, Kohya/musubi (alpha folded in) and musubi's original
    layout (fused attention qkv) files of one LoRA give one picture, different from none; A1111's <lora:…> tag works; switching off restores."""
    from pipelines.demo.zimage import DEMO_ZIMAGE_LORAS

    plain = rgb(zi.txt2img(base())[0][0])
    pictures = {layout: rgb(zi.txt2img(base(loras=[[name, 1.0]]))[0][0]) for layout, name in DEMO_ZIMAGE_LORAS.items()}
    assert np.abs(pictures["peft"] - plain).mean() > 2
    assert np.abs(pictures["peft"] - pictures["comfy"]).max() <= 1
    assert np.abs(pictures["peft"] - pictures["kohya"]).max() <= 1
    assert np.abs(pictures["peft"] - pictures["fused"]).max() <= 1  # the original layout's fused qkv, split
    tagged, info = zi.txt2img(base(prompt=TITLE + " <lora:danqing-demo-zimage-lora:1>"))
    assert np.abs(rgb(tagged[0]) - pictures["peft"]).max() <= 1
    with Image.open(tagged[0]) as image:
        assert "Lora hashes:" in image.info["parameters"] and "标题“丹青”" in image.info["parameters"]
    assert np.array_equal(rgb(zi.txt2img(base())[0][0]), plain)
    assert any(row["kind"] == "lora" for row in zi.store.resident_models()) or zi.store.adapters.rows()


def test_loras_of_the_other_families_are_named_in_chinese(zi, studio):
    from pipelines.demo.zimage import DEMO_ZIMAGE_LORAS
    from pipelines.errors import ModelError
    from strings import error_text, load

    with pytest.raises(ModelError) as err:
        zi.txt2img(base(loras=[["danqing-demo-kohya", 1.0]]))  # an SD 1.x LoRA on Z-Image
    assert err.value.code == "lora_family" and err.value.fields["base"] == "Z-Image"
    with pytest.raises(ModelError) as err:
        studio.txt2img(Txt2Img.from_fields(prompt="山水", width=64, height=64, num_inference_steps=2,
                                           loras=[[DEMO_ZIMAGE_LORAS["kohya"], 1.0]]))
    assert err.value.code == "lora_family" and err.value.fields["lora"] == "Z-Image"
    assert "Z-Image" in error_text(load("zh"), err.value.code, err.value.fields)


def test_what_z_image_does_not_do_here_is_said(zi, tmp_path):
    """DeepCache (a U-Net trick) is skipped and said; 训练 LoRA on Z-Image is a Chinese sentence."""
    from pipelines.errors import DanqingError
    from pipelines.requests import TrainLora
    from pipelines.tasks import train as training

    paths, info = zi.txt2img(base(deepcache=2))
    assert info["notices"]["deepcache_skipped"] == "Z-Image"
    pictures = []
    for i in range(2):
        pictures.append(tmp_path / f"z{i}.png")
        photo(seed=i).save(pictures[-1])
    request = TrainLora.build("z", "x", [str(p) for p in pictures], None, steps=1, resolution=64)
    with pytest.raises(DanqingError) as err:
        training.train(zi.store, request, tmp_path / "lora" / "_run", tmp_path / "lora")
    assert err.value.code == "train_family_unsupported"


def test_the_vae_list_offers_what_the_model_reads(zi, studio):
    """The 16-channel ae.safetensors is offered to Z-Image, not to an SD model, and the reverse."""
    from pipelines.demo.library import DEMO_VAE
    from pipelines.demo.zimage import DEMO_FLUX_VAE

    assert DEMO_FLUX_VAE in zi.vae_choices() and DEMO_VAE not in zi.vae_choices()
    studio.store.base()
    assert DEMO_VAE in studio.vae_choices() and DEMO_FLUX_VAE not in studio.vae_choices()


# X/Y, 历史, a tiny preview decoder -------------------------------------------------------------------
def test_xy_grid_and_history_on_z_image(zi):
    """An X/Y grid of quoted-title prompts (Prompt S/R) and seeds; 历史 finds the picture by
    the Chinese title."""
    from extensions import load_extensions

    grid = load_extensions([]).get("xy_grid").module
    base_fields = dict(prompt=TITLE, negative_prompt="", sampler="Euler", seed=-1, num_inference_steps=2,
                       guidance_scale=0, width=64, height=64)
    path, info = grid.run_grid(zi, base_fields, "prompt_sr", "丹青，山水", "seed", "1-2")
    with Image.open(path) as image:
        assert image.size == tuple(info["size"]) and image.size[0] >= 2 * 64
    zi.txt2img(base(prompt="海报，标题“青绿山水”，留白"))
    page = zi.history(text="青绿山水")
    assert page.total >= 1 and "标题“青绿山水”" in page.entries[0].prompt


def test_a_taef1_tiny_decoder_gives_z_image_previews(zi, tmp_path):
    """A 16-channel AutoencoderTiny in models/vae-approx named like madebyollin's taef1 is picked
    for Z-Image (never taesd's 4-channel one), cached, and previews arrive full size."""
    from dataclasses import replace

    from diffusers import AutoencoderTiny

    from pipelines.store import ModelFolders, ModelStore
    from pipelines.tasks.preview import preview_decoder

    approx = tmp_path / "vae-approx"
    tiny = dict(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4)
    AutoencoderTiny(**tiny).save_pretrained(approx / "taesd-tiny")
    AutoencoderTiny(latent_channels=16, **tiny).save_pretrained(approx / "taef1-tiny")

    class Folders(ModelFolders):
        def folder(self, kind):
            return approx if kind == "vae_approx" else super().folder(kind)

    live = ModelStore(replace(zi.store.settings, preview_every=0.0), Folders(zi.store.folders.root))
    shown = []
    txt2img.run(live, base(num_inference_steps=3), on_preview=lambda image, step, total: shown.append(image))
    assert len(shown) == 2 and shown[0].size == (64, 64)
    assert [row["name"] for row in live.resident_models() if row["kind"] == "preview_decoder"] == ["taef1-tiny"]
    assert preview_decoder(live).func.__name__ == "tiny_decode"


def test_a_switch_that_runs_out_of_gpu_memory_brings_the_previous_model_back(demo_models, tmp_path, monkeypatch):
    """The previous model leaves the GPU before Z-Image takes it; if Z-Image still does not fit,
    the error is 显存不足 and the previous model is loaded back, working."""
    from pipelines.errors import ModelError
    from pipelines.store import memory

    own = make_studio(demo_models, tmp_path / "out")
    first = rgb(own.txt2img(Txt2Img.from_fields(prompt="山水", width=64, height=64, num_inference_steps=2, seed=3))[0][0])
    real = memory.apply

    def apply(mode, pipe, family, device, dtype):
        if family is ZIMAGE:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(mode, pipe, family, device, dtype)

    monkeypatch.setattr(memory, "apply", apply)
    with pytest.raises(ModelError) as err:
        own.switch_model(DEMO_ZIMAGE)
    assert err.value.code == "out_of_memory"
    assert own.store.family is SD1 and own.current_model() == "danqing-demo-zh"
    again = rgb(own.txt2img(Txt2Img.from_fields(prompt="山水", width=64, height=64, num_inference_steps=2, seed=3))[0][0])
    assert np.array_equal(first, again)
