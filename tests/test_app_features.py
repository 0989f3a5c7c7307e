"""ControlNet, LoRA and upscaling through the really launched app (gradio_client), as the UI
and API clients use them."""

import json

import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

from pipelines.formats.pnginfo import parse_parameters


@pytest.fixture(scope="module")
def client(demo_app):
    return demo_app.client()


@pytest.fixture(scope="module")
def control_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "control.png"
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(80, 96, 3) * 255).astype("uint8")).save(path)
    return str(path)


def pixels(gallery_item) -> np.ndarray:
    return np.asarray(Image.open(gallery_item["image"]))


def test_lora_parameter_changes_the_image_and_is_recorded(client):
    args = dict(prompt="竹林", width=64, height=64, num_inference_steps=2, seed=11, api_name="/txt2img")
    plain, _ = client.predict(**args)
    with_lora, info = client.predict(**args, loras=[["danqing-demo-kohya.safetensors", 1.0]])
    again, _ = client.predict(**args)
    assert not np.array_equal(pixels(plain[0]), pixels(with_lora[0]))
    assert np.array_equal(pixels(plain[0]), pixels(again[0]))  # none restores the base exactly
    assert json.loads(info)["loras"] == [["danqing-demo-kohya.safetensors", 1.0]]
    text = Image.open(with_lora[0]["image"]).info["parameters"]
    parsed = parse_parameters(text)
    # The tag and the hashes name the LoRA without its file ending, as A1111 and Civitai read it.
    assert "<lora:danqing-demo-kohya:1>" in parsed["prompt"]
    assert parsed["fields"]["Lora hashes"].startswith("danqing-demo-kohya: ")


def test_lora_tag_in_the_prompt_works_like_the_parameter(client):
    args = dict(width=64, height=64, num_inference_steps=2, seed=12, api_name="/txt2img")
    tagged, info = client.predict(prompt="竹林 <lora:danqing-demo-kohya:1>", **args)
    listed, _ = client.predict(prompt="竹林", loras=[["danqing-demo-kohya.safetensors", 1.0]], **args)
    assert np.array_equal(pixels(tagged[0]), pixels(listed[0]))
    assert json.loads(info)["prompt"] == "竹林"


def test_canny_preview_and_generation_with_depth_and_hires(client, control_png):
    preview = client.predict(handle_file(control_png), 100, 200, api_name="/canny_preview")
    assert Image.open(preview).size == (96, 80)  # at the input's own resolution
    gallery, info = client.predict(
        handle_file(control_png), "荷花", width=64, height=64, num_inference_steps=2, seed=3,
        controlnet_model="demo-canny", add_depth=True, depth_image=handle_file(control_png),
        depth_controlnet_model="demo-depth.safetensors", depth_estimator="demo-dpt",
        hires_upscaler="RealESRGAN_x4plus-tiny.pth", hires_scale=2, api_name="/canny",
    )
    meta = json.loads(info)
    assert [u["kind"] for u in meta["controlnet"]] == ["canny", "depth"]
    sizes = [Image.open(item["image"]).size for item in gallery]
    assert sizes[:2] == [(64, 64), (128, 128)]  # the original and its x2 twin are both kept
    fields = parse_parameters(Image.open(gallery[0]["image"]).info["parameters"])["fields"]
    assert "Model: demo-canny" in fields["ControlNet 0"] and "Model: demo-depth.safetensors" in fields["ControlNet 1"]


def test_mismatched_controlnet_is_refused_in_chinese_and_the_server_goes_on(client, control_png):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        client.predict(handle_file(control_png), "荷花", width=64, height=64, num_inference_steps=2,
                       controlnet_model="demo-wrong-xattn.safetensors", api_name="/canny")
    assert "不匹配" in str(info.value)
    gallery, _ = client.predict(prompt="猫", width=64, height=64, num_inference_steps=1, api_name="/txt2img")
    assert len(gallery) == 1


def test_depth_endpoint(client, control_png):
    gallery, info = client.predict(
        handle_file(control_png), "山", width=64, height=64, num_inference_steps=2, seed=4,
        controlnet_model="demo-depth.safetensors", depth_estimator="demo-dpt", api_name="/depth",
    )
    assert json.loads(info)["controlnet"][0]["kind"] == "depth"


def test_draft_mode_generates_small_and_upscales_x4(client):
    gallery, info = client.predict(prompt="猫", width=512, height=512, num_inference_steps=2, seed=5, draft=True,
                                   hires_upscaler="realesr-general-x4v3-tiny.safetensors", api_name="/txt2img")
    meta = json.loads(info)
    assert (meta["width"], meta["height"]) == (256, 256) and meta["draft"] is True
    assert [Image.open(item["image"]).size for item in gallery] == [(256, 256), (1024, 1024)]
    assert meta["upscale_seconds"] > 0


def test_upscale_endpoint_keeps_alpha(client, tmp_path):
    rgba = Image.new("RGBA", (40, 30), (200, 10, 10, 128))
    path = tmp_path / "rgba.png"
    rgba.save(path)
    gallery, info = client.predict([handle_file(str(path))], "RealESRGAN_x2plus-tiny.pth", 4, api_name="/upscale")
    out = Image.open(gallery[0]["image"])
    assert out.size == (160, 120) and out.mode == "RGBA"
    assert json.loads(info)["scale"] == 4


def test_system_info_shows_one_unet_after_every_tab(client, control_png):
    client.predict(prompt="猫", width=64, height=64, num_inference_steps=1, api_name="/txt2img")
    client.predict(handle_file(control_png), "荷花", width=64, height=64, num_inference_steps=1,
                   controlnet_model="demo-canny", api_name="/canny")
    client.predict([handle_file(control_png)], "RealESRGAN_x2plus-tiny.pth", 2, api_name="/upscale")
    client.predict(handle_file(control_png), "荷花", width=64, height=64, num_inference_steps=2, api_name="/img2img")
    client.predict({"background": handle_file(control_png), "layers": [], "composite": None}, handle_file(control_png),
                   "荷花", num_inference_steps=2, api_name="/inpaint")
    client.predict(handle_file(control_png), "荷花", num_inference_steps=1, right=8, api_name="/outpaint")
    resident = client.predict(api_name="/system_info")["resident"]
    kinds = [row["kind"] for row in resident]
    assert kinds.count("unet") == 1 and kinds.count("vae") == 1 and kinds.count("text_encoder") == 1
    assert "controlnet" in kinds and "upscaler" in kinds
    assert all(row["bytes"] > 0 for row in resident)


# Image editing endpoints (issue 15) -----------------------------------------------------------
def test_img2img_endpoint_with_a_canny_unit(client, control_png):
    gallery, info = client.predict(
        handle_file(control_png), "给线稿上色，国风", width=64, height=64, num_inference_steps=4, seed=8,
        denoising_strength=0.6, add_canny=True, canny_image=handle_file(control_png), canny_controlnet_model="demo-canny",
        api_name="/img2img")
    meta = json.loads(info)
    assert meta["mode"] == "img2img" and meta["denoising_strength"] == 0.6
    assert meta["controlnet"][0]["kind"] == "canny" and len(gallery) == 2  # the result and its Canny map


def test_inpaint_endpoint_reads_the_painted_layer_as_the_mask(client, tmp_path):
    source = Image.fromarray((np.random.RandomState(2).rand(64, 80, 3) * 255).astype("uint8"))
    layer = Image.new("RGBA", source.size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (40, 10, 70, 40))
    source.save(tmp_path / "source.png")
    layer.save(tmp_path / "layer.png")
    gallery, info = client.predict(
        {"background": handle_file(str(tmp_path / "source.png")), "layers": [handle_file(str(tmp_path / "layer.png"))],
         "composite": None}, None, "一只猫", num_inference_steps=3, seed=2, denoising_strength=1.0, mask_blur=0,
        api_name="/inpaint")
    out = np.asarray(Image.open(gallery[0]["image"]).convert("RGB")).astype(int)
    original = np.asarray(source).astype(int)
    assert out.shape == original.shape
    assert np.array_equal(out[:, :32], original[:, :32]) and not np.array_equal(out[15:35, 45:65], original[15:35, 45:65])
    assert json.loads(info)["mode"] == "inpaint"
    with pytest.raises(Exception, match="涂抹"):  # nothing painted, no mask: said in Chinese
        client.predict({"background": handle_file(str(tmp_path / "source.png")), "layers": [], "composite": None}, None,
                       "一只猫", num_inference_steps=3, api_name="/inpaint")


def test_outpaint_endpoint_keeps_the_original(client, tmp_path):
    source = Image.fromarray((np.random.RandomState(3).rand(48, 64, 3) * 255).astype("uint8"))
    source.save(tmp_path / "source.png")
    gallery, info = client.predict(handle_file(str(tmp_path / "source.png")), "山谷", num_inference_steps=3, seed=6,
                                   left=16, right=0, down=16, api_name="/outpaint")
    out = np.asarray(Image.open(gallery[0]["image"]).convert("RGB")).astype(int)
    assert out.shape[:2] == (64, 80)
    assert np.array_equal(out[:48, 16:], np.asarray(source).astype(int))
    assert json.loads(info)["notices"]["outpaint"] == [16, 0, 0, 16]


def test_txt2img_endpoint_hires_fix(client):
    gallery, info = client.predict(prompt="猫", width=64, height=64, num_inference_steps=2, seed=5, hires_pass=True,
                                   hires_strength=0.5, hires_upscaler="RealESRGAN_x2plus-tiny.pth", api_name="/txt2img")
    assert [Image.open(item["image"]).size for item in gallery] == [(128, 128)]
    assert json.loads(info)["hires"]["upscaler"] == "RealESRGAN_x2plus-tiny.pth"
