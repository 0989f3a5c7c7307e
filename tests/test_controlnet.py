"""ControlNet on the demo bundle: shared base modules, the Canny and depth preprocessors, single
and multiple ControlNets, refusal of a ControlNet that does not fit, and safe image uploads."""

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines.demo.controlnet import DEMO_CANNY, DEMO_DEPTH, DEMO_DEPTH_ESTIMATOR, DEMO_HINT_CHANNELS, DEMO_WRONG
from pipelines.formats import images as preprocess
from pipelines.formats.controlnet import shape_from_config, check_fits
from pipelines.requests import Control, ControlUnit, validate_units
from pipelines.tasks import annotators
from pipelines.tasks import controlnet as cn
from pipelines.tasks.denoise import build_pipeline
from pipelines.tasks import txt2img
from pipelines.errors import ModelError, ParamError
from pipelines.requests import Txt2Img

SMALL = dict(prompt="竹林里的熊猫，水墨画", width=64, height=64, num_inference_steps=3)


def base_params(seed=21):
    return Txt2Img.from_fields(**SMALL, seed=seed)


def scene(width=80, height=48) -> Image.Image:
    """A picture with edges: a gradient, a disc and a bar."""
    x = np.linspace(0, 255, width, dtype=np.uint8)
    image = Image.fromarray(np.stack([np.tile(x, (height, 1))] * 3, axis=-1))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 8, 40, 38), fill=(250, 30, 30))
    draw.rectangle((50, 5, 60, height - 5), fill=(0, 0, 120))
    return image


def pixels(result):
    return np.asarray(result.images[0]).astype(int)


@pytest.fixture(scope="module")
def maps(store):
    return {
        "canny": annotators.canny_map(scene(64, 64), 50, 150),
        "depth": annotators.depth_map(store, scene(64, 64), DEMO_DEPTH_ESTIMATOR),
    }


@pytest.fixture(scope="module")
def plain(store):
    """Text-to-image pixels of the seed every ControlNet test compares against."""
    return pixels(txt2img.run(store, base_params()))


# 1. What is listed and how it loads -----------------------------------------------------------
def test_lists_folders_files_and_depth_estimators(store):
    from pipelines.demo.controlnet import DEMO_XL_CANNY, DEMO_XL_UNION
    from pipelines.demo.zimage import DEMO_ZIMAGE_CONTROLNET, DEMO_ZIMAGE_CONTROLNET_FILE

    assert cn.list_controlnets(store) == [DEMO_CANNY, DEMO_DEPTH, DEMO_WRONG, DEMO_XL_CANNY, DEMO_XL_UNION,
                                          DEMO_ZIMAGE_CONTROLNET, DEMO_ZIMAGE_CONTROLNET_FILE]
    assert annotators.list_depth_estimators(store) == [DEMO_DEPTH_ESTIMATOR]


def test_controlnet_pipeline_shares_the_base_modules(store):
    from diffusers import StableDiffusionControlNetPipeline

    net = cn.load_controlnet(store, DEMO_CANNY)
    assert cn.load_controlnet(store, DEMO_CANNY) is net  # cached, loaded once
    pipe = build_pipeline(store, base_params(), StableDiffusionControlNetPipeline, controlnet=net)
    base = store.base()
    assert pipe.unet is base.unet and pipe.vae is base.vae and pipe.text_encoder is base.text_encoder
    assert pipe.controlnet is net


def test_single_file_controlnet_loads_with_its_own_weights(store, demo_models):
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    net = cn.load_controlnet(store, DEMO_DEPTH)
    assert isinstance(net, ControlNetModel)
    ldm = load_file(demo_models / "controlnet" / DEMO_DEPTH)
    assert "middle_block_out.0.weight" in ldm and "controlnet_mid_block.weight" not in ldm
    assert np.array_equal(net.controlnet_mid_block.weight.detach().numpy(), ldm["middle_block_out.0.weight"].numpy())
    assert tuple(net.config.conditioning_embedding_out_channels) == DEMO_HINT_CHANNELS  # read from the file


# 2. Preprocessors ----------------------------------------------------------------------------
def test_canny_preview_is_cv2_canny_at_the_input_resolution():
    image = scene(80, 48)
    edges = np.asarray(annotators.canny_map(image, 60, 140))
    expected = cv2.Canny(np.asarray(image), 60, 140)
    assert edges.shape == (48, 80, 3)
    for channel in range(3):
        assert np.array_equal(edges[..., channel], expected)
    assert expected.any()
    with pytest.raises(ParamError) as info:
        annotators.canny_map(image, 200, 100)
    assert info.value.code == "canny_thresholds_order"
    with pytest.raises(ParamError) as info:
        annotators.canny_map(image, 10, 256)
    assert info.value.code == "out_of_range"


def test_depth_map_is_full_range_rgb_at_the_input_resolution(store):
    depth = annotators.depth_map(store, scene(80, 48), DEMO_DEPTH_ESTIMATOR)
    values = np.asarray(depth)
    assert depth.mode == "RGB" and values.shape == (48, 80, 3)
    assert values.min() == 0 and values.max() == 255
    assert np.array_equal(values[..., 0], values[..., 2])


def test_missing_depth_estimator_says_what_to_put_where(store):
    with pytest.raises(ModelError) as info:
        annotators.depth_map(store, scene(), "dpt-hybrid-midas")
    assert info.value.code == "depth_estimator_missing"
    assert info.value.fields["folder"].endswith("annotators/dpt-hybrid-midas")
    assert info.value.fields["suggestion"] == "Intel/dpt-hybrid-midas"
    with pytest.raises(ParamError):
        annotators.depth_map(store, scene(), "../checkpoints")


# 3. Generation ---------------------------------------------------------------------------------
def test_controlnet_changes_the_image_for_the_same_seed(store, maps, plain):
    params = Control(base_params(), (ControlUnit(DEMO_CANNY, maps["canny"]),))
    result = cn.run(store, params)
    assert result.images[0].size == (64, 64)
    assert np.abs(pixels(result) - plain).mean() > 1


def test_multi_controlnet_uses_each_units_weight(store, maps, plain):
    def run(w_canny, w_depth):
        units = (
            ControlUnit(DEMO_CANNY, maps["canny"], weight=w_canny),
            ControlUnit(DEMO_DEPTH, maps["depth"].resize((96, 40)), weight=w_depth, guidance_end=0.7),
        )
        return cn.run(store, Control(base_params(), units, resize_mode="fit"))

    both = run(0.5, 1.5)
    assert both.notices["controlnets"] == [DEMO_CANNY, DEMO_DEPTH]
    assert np.abs(pixels(both) - plain).mean() > 1
    # Weight 0 on both: the ControlNets add nothing, and the image is text-to-image's.
    assert np.abs(pixels(run(0.0, 0.0)) - plain).max() <= 1


def test_mismatched_controlnet_is_refused_before_touching_the_base(store, maps, plain):
    unet = store.base().unet
    params = Control(base_params(), (ControlUnit(DEMO_WRONG, maps["canny"]),))
    with pytest.raises(ModelError) as info:
        cn.run(store, params)
    assert info.value.code == "controlnet_mismatch"
    assert info.value.fields["what"] == "cross_attention_dim"
    assert DEMO_WRONG not in [row["name"] for row in store.resident_models()]
    assert store.base().unet is unet
    assert np.array_equal(pixels(txt2img.run(store, base_params())), plain)


def test_sdxl_and_other_width_configs_are_refused():
    base = shape_from_config({"block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32, "in_channels": 4})
    sdxl = {"block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 2048, "in_channels": 4, "addition_embed_type": "text_time"}
    with pytest.raises(ModelError) as info:
        check_fits("x", shape_from_config(sdxl), base)
    assert info.value.code == "controlnet_family" and info.value.fields["net"] == "SDXL"
    wider = {"block_out_channels": [32, 64, 64], "layers_per_block": 1, "cross_attention_dim": 32, "in_channels": 4}
    with pytest.raises(ModelError) as info:
        check_fits("x", shape_from_config(wider), base)
    assert info.value.fields["what"] == "block_out_channels"


def test_resident_models_show_one_unet_and_the_controlnets(store):
    cn.load_controlnet(store, DEMO_CANNY)
    cn.load_controlnet(store, DEMO_DEPTH)
    rows = store.resident_models()
    assert len([r for r in rows if r["kind"] == "unet"]) == 1
    assert {r["name"] for r in rows if r["kind"] == "controlnet"} >= {DEMO_CANNY, DEMO_DEPTH}


def test_units_are_validated_on_the_server():
    image = scene()
    good = ControlUnit(DEMO_CANNY, image)
    assert validate_units([good]) == (good,)
    request = Control.build(base_params(), [good], "fit")
    assert request.units == (good,) and request.resize_mode == "fit"
    cases = [
        ([], "crop", "controlnet_no_units"),
        ([good] * 4, "crop", "controlnet_too_many_units"),
        ([good], "zoom", "unknown_resize_mode"),
        ([ControlUnit(DEMO_CANNY, image, weight=2.5)], "crop", "out_of_range"),
        ([ControlUnit(DEMO_CANNY, image, weight=float("nan"))], "crop", "not_a_number"),
        ([ControlUnit(DEMO_CANNY, image, guidance_start=0.6, guidance_end=0.6)], "crop", "controlnet_guidance_order"),
        ([ControlUnit(DEMO_CANNY, None)], "crop", "controlnet_no_image"),
    ]
    for units, mode, code in cases:
        with pytest.raises(ParamError) as info:
            validate_units(units, mode)
        assert info.value.code == code


# 4. Uploads ------------------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header claims width x height (a decompression bomb's shape)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_load_image_converts_every_mode_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    out = preprocess.load_image(encode(rgba))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (255, 0, 0)

    grey = preprocess.load_image(Image.new("L", (3, 3), 77))
    assert grey.mode == "RGB" and grey.getpixel((1, 1)) == (77, 77, 77)

    deep = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert deep.mode.startswith("I;16")
    out = preprocess.load_image(encode(deep))
    assert [out.getpixel((i, 0))[0] for i in range(3)] == [0, 100, 255]

    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in ink
    out = preprocess.load_image(encode(cmyk, "JPEG", quality=95))
    r, g, b = out.getpixel((4, 4))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60

    path = tmp_path / "photo.png"
    Image.new("P", (5, 5), 3).save(path)
    assert preprocess.load_image(str(path)).size == (5, 5)


def test_load_image_applies_exif_rotation():
    wide = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view", as phones write it
    out = preprocess.load_image(encode(wide, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_load_image_refuses_bad_input_before_decoding():
    png = encode(scene())
    for data in (png[: len(png) // 2], b"not an image at all", b"", 42):
        with pytest.raises(ParamError) as info:
            preprocess.load_image(data)
        assert info.value.code == "image_unreadable"
    # Header sizes over the cap: refused from the header (decoding them would need gigabytes).
    for side in (12000, 7000):
        with pytest.raises(ParamError) as info:
            preprocess.load_image(png_declaring(side, side))
        assert info.value.code == "image_too_large"


def test_fit_to_modes():
    image = scene(80, 40)
    assert preprocess.fit_to(image, 64, 64, "crop").size == (64, 64)
    fitted = np.asarray(preprocess.fit_to(image, 64, 64, "fit"))
    assert fitted.shape == (64, 64, 3) and not fitted[0].any()  # padded with black above
    assert preprocess.fit_to(image, 32, 96, "stretch").size == (32, 96)
    with pytest.raises(ParamError):
        preprocess.fit_to(image, 64, 64, "zoom")
