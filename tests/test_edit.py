"""Image editing on the demo bundle (issue 15): 图生图, 局部重绘, 扩图 and the 高清修复 pass —
shared components, what strength 0 and 1 do, pixels outside a mask kept exactly, the only-masked
box, outpainting keeping the original, hires fix against the plain upscale, LoRA and ControlNet
in img2img, bad masks, and a dedicated 9-channel inpainting model."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import make_studio
from pipelines.demo import DEMO_MODEL_INPAINT
from pipelines.demo.controlnet import DEMO_CANNY
from pipelines.errors import ParamError
from pipelines.requests import Img2Img, Inpaint, Outpaint, Txt2Img, schedule
from pipelines.tasks import edit, masks

BASE = dict(prompt="山水画，远山，小船", width=64, height=64, num_inference_steps=4, seed=7)


def base(**more) -> Txt2Img:
    return Txt2Img.from_fields({**BASE, **more})


def photo(width=96, height=80, seed=0) -> Image.Image:
    """A picture with structure (gradients, a disc) so that changes are visible."""
    x = np.linspace(0, 255, width)
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack([np.tile(x, (height, 1)), np.repeat(y, width, axis=1), np.full((height, width), 128)], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8))
    ImageDraw.Draw(image).ellipse((20, 15, 60, 55), fill=(240, 40, 40))
    return image


def box_mask(size, box) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def far_from(box, size, margin) -> np.ndarray:
    """True where a pixel is more than ``margin`` pixels away from ``box``."""
    far = np.ones((size[1], size[0]), bool)
    x0, y0, x1, y1 = box
    far[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin] = False
    return far


def rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


class UNetCalls:
    """Counts the shared U-Net's forward calls (one per denoising step with CFG batched)."""

    def __init__(self, store):
        self.count = 0
        self.handle = store.base().unet.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.count += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def studio(demo_models, tmp_path_factory):
    return make_studio(demo_models, tmp_path_factory.mktemp("edit-out"))


# 1. Requests ---------------------------------------------------------------------------------
def test_requests_refuse_bad_values_before_any_work():
    for bad in (-0.1, 1.5, "x", float("nan")):
        with pytest.raises(ParamError):
            Img2Img.build(base(), photo(), bad)
    with pytest.raises(ParamError, match="edit_image_missing"):
        Img2Img.build(base(), None)
    with pytest.raises(ParamError, match="unknown_resize_mode"):
        Img2Img.build(base(), photo(), 0.5, "squash")
    edit_request = Img2Img.build(base(), photo(), 0.5)
    with pytest.raises(ParamError, match="mask_missing"):
        Inpaint.build(edit_request, None)
    with pytest.raises(ParamError, match="unknown_inpaint_fill"):
        Inpaint.build(edit_request, photo(), fill="magic")
    with pytest.raises(ParamError, match="outpaint_nothing"):
        Outpaint.build(edit_request)
    with pytest.raises(ParamError, match="edit_no_hires_pass"):
        Img2Img.build(base(hires_pass=True), photo())
    with pytest.raises(ParamError, match="latent_needs_hires_pass"):
        base(hires_upscaler="latent")
    with pytest.raises(ParamError, match="job_too_large"):
        base(width=1024, height=1024, num_images_per_prompt=2, hires_pass=True, hires_scale=2)


def test_schedule_runs_steps_times_strength_and_at_least_one_step():
    assert schedule(20, 0.5) == (20, 10)
    assert schedule(20, 1.0) == (20, 20)
    assert schedule(20, 0.0) == (20, 0)
    assert schedule(4, 0.05) == (20, 1)  # 4 × 0.05 < 1: the schedule is lengthened, one step runs


# 2. Shared components -----------------------------------------------------------------------
def test_every_edit_pipeline_shares_the_base_modules(studio, monkeypatch, tmp_path):
    store = studio.store
    made = []
    original = store.pipeline

    def spy(cls=None, **components):
        pipe = original(cls, **components)
        made.append(pipe)
        return pipe

    monkeypatch.setattr(store, "pipeline", spy)
    control = tmp_path / "lines.png"
    photo(64, 64).save(control)
    canny = {"kind": "canny", "image": str(control), "model": DEMO_CANNY}
    studio.img2img(Img2Img.build(base(), photo(), 0.5))
    studio.img2img(Img2Img.build(base(), photo(), 0.5, units=[canny]))
    studio.inpaint(Inpaint.build(Img2Img.build(base(), photo(), 0.5), box_mask((96, 80), (10, 10, 40, 40))))
    studio.outpaint(Outpaint.build(Img2Img.build(base(), photo(), 0.8), right=16))
    studio.txt2img(base(hires_pass=True))
    names = {type(p).__name__ for p in made}
    assert {"StableDiffusionImg2ImgPipeline", "StableDiffusionControlNetImg2ImgPipeline",
            "StableDiffusionInpaintPipeline"} <= names
    shared = store.base()
    for pipe in made:
        assert pipe.unet is shared.unet and pipe.vae is shared.vae and pipe.text_encoder is shared.text_encoder
    kinds = [row["kind"] for row in studio.system_info()["resident"]]
    assert kinds.count("unet") == 1 and kinds.count("vae") == 1 and kinds.count("text_encoder") == 1


# 3. Strength ----------------------------------------------------------------------------------
def test_strength_zero_is_the_vae_round_trip_without_a_unet_step(studio):
    source = photo()
    with UNetCalls(studio.store) as calls:
        paths, info = studio.img2img(Img2Img.build(base(width=96, height=80), source, 0.0))
    assert calls.count == 0 and info["notices"]["unet_steps"] == 0
    expected = edit.round_trip(studio.store, [source], 1)[0]
    assert np.array_equal(rgb(paths[0]), np.asarray(expected).astype(int))


def test_strength_sets_how_many_unet_steps_run(studio):
    for strength, steps, runs in ((1.0, 4, 4), (0.5, 8, 4), (0.05, 4, 1)):
        with UNetCalls(studio.store) as calls:
            _, info = studio.img2img(Img2Img.build(base(num_inference_steps=steps), photo(), strength))
        assert calls.count == runs and info["notices"]["unet_steps"] == runs, (strength, steps)


def test_strength_one_forgets_the_input_and_low_strength_stays_close(studio):
    def out(image, strength):
        paths, _ = studio.img2img(Img2Img.build(base(num_inference_steps=10), image, strength))
        return rgb(paths[0])

    black, white = Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), (255, 255, 255))
    # From the schedule's noisiest step the input barely shows (its first sigma is large, not
    # infinite); at 0.3 it decides the picture.
    at_one = np.abs(out(black, 1.0) - out(white, 1.0)).mean()
    at_low = np.abs(out(black, 0.3) - out(white, 0.3)).mean()
    assert at_one < 3 and at_low > 5 * at_one


def test_img2img_fits_the_input_to_the_requested_size_and_records_the_strength(studio):
    paths, info = studio.img2img(Img2Img.build(base(width=64, height=96), photo(120, 60), 0.6, "fit"))
    with Image.open(paths[0]) as image:
        assert image.size == (64, 96)
        assert "Denoising strength: 0.6" in image.info["parameters"]
    assert info["mode"] == "img2img" and info["resize_mode"] == "fit"


# 4. Inpainting ----------------------------------------------------------------------------
@pytest.mark.parametrize("fill", ["original", "fill", "latent_noise", "latent_nothing"])
def test_inpaint_keeps_every_pixel_beyond_the_blur(studio, fill):
    source, box, blur = photo(), (30, 20, 62, 50), 4
    request = Inpaint.build(Img2Img.build(base(), source, 0.9), box_mask(source.size, box), blur, fill)
    paths, info = studio.inpaint(request)
    out = rgb(paths[0])
    assert out.shape[:2] == (80, 96)  # the input's own size
    far = far_from(box, source.size, 3 * blur + 1)
    assert np.array_equal(out[far], np.asarray(source).astype(int)[far])
    inside = ~far_from(box, source.size, -4)  # well inside the mask
    assert np.abs(out[inside] - np.asarray(source).astype(int)[inside]).mean() > 5
    with Image.open(paths[0]) as image:
        text = image.info["parameters"]
    assert "Mask blur: 4" in text and "Inpaint area: Whole picture" in text


def test_only_masked_works_on_the_padded_box_and_pastes_it_back(studio):
    source, box = photo(160, 120), (70, 50, 90, 70)
    request = Inpaint.build(Img2Img.build(base(width=64, height=64), source, 1.0), box_mask(source.size, box),
                            mask_blur=0, full_res=True, padding=8)
    paths, info = studio.inpaint(request)
    x0, y0, x1, y1 = info["notices"]["inpaint_box"]
    assert (x0, y0, x1, y1) == (62, 42, 98, 78)  # the mask's box plus 8, square like 64×64
    out, original = rgb(paths[0]), np.asarray(source).astype(int)
    assert out.shape[:2] == (120, 160)
    outside = np.ones((120, 160), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], original[outside])
    assert not np.array_equal(out[50:70, 70:90], original[50:70, 70:90])
    with Image.open(paths[0]) as image:
        assert "Inpaint area: Only masked" in image.info["parameters"]


def test_the_painted_strokes_are_the_mask_and_inverting_repaints_the_rest(studio):
    source = photo()
    layer = Image.new("RGBA", source.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle((5, 5, 25, 25), fill=(255, 255, 255, 255))
    paths, _ = studio.inpaint(Inpaint.build(Img2Img.build(base(), source, 1.0), [layer], mask_blur=0))
    out, original = rgb(paths[0]), np.asarray(source).astype(int)
    assert np.array_equal(out[40:, 40:], original[40:, 40:]) and not np.array_equal(out[5:25, 5:25], original[5:25, 5:25])
    paths, _ = studio.inpaint(Inpaint.build(Img2Img.build(base(), source, 1.0), [layer], mask_blur=0, invert=True))
    out = rgb(paths[0])
    assert np.array_equal(out[6:25, 6:25], original[6:25, 6:25]) and not np.array_equal(out[40:, 40:], original[40:, 40:])


def test_bad_masks(studio, tmp_path):
    source = photo()
    edit_request = Img2Img.build(base(), source, 0.8)

    def run(mask, **more):
        return studio.inpaint(Inpaint.build(edit_request, mask, **more))

    with pytest.raises(ParamError, match="mask_size_mismatch"):
        run(Image.new("L", (50, 50), 255))
    with pytest.raises(ParamError, match="mask_unreadable"):
        run(b"this is not an image")
    with pytest.raises(ParamError, match="mask_empty"):
        run(Image.new("L", source.size, 0))
    with pytest.raises(ParamError, match="mask_empty"):
        run(Image.new("L", source.size, 255), invert=True)
    # Same proportions, other size: resized. All white: the whole picture is repainted.
    paths, _ = run(box_mask((192, 160), (0, 0, 96, 80)), mask_blur=0)
    out, original = rgb(paths[0]), np.asarray(source).astype(int)
    assert np.array_equal(out[:, 50:], original[:, 50:]) and not np.array_equal(out[:40, :40], original[:40, :40])
    paths, _ = run(Image.new("L", source.size, 255))
    assert (np.abs(rgb(paths[0]) - original).sum(axis=-1) > 0).mean() > 0.9


def test_save_inputs_keeps_the_input_and_mask_beside_the_result(studio):
    source = photo()
    paths, info = studio.inpaint(Inpaint.build(Img2Img.build(base(), source, 0.5, save_inputs=True),
                                               box_mask(source.size, (0, 0, 30, 30))))
    names = [p.name for p in paths]
    assert len(paths) == 3 and names[1].endswith("-init.png") and names[2].endswith("-mask.png")
    assert np.array_equal(rgb(paths[1]), np.asarray(source).astype(int))
    with Image.open(paths[2]) as mask:
        assert mask.getpixel((5, 5)) == 255 and mask.getpixel((60, 60)) == 0
        assert "AIGC" not in str(mask.info)  # nothing in it was generated


# 5. Outpainting ---------------------------------------------------------------------------
def test_outpainting_grows_the_canvas_and_keeps_the_original(studio):
    source = photo()
    paths, info = studio.outpaint(Outpaint.build(Img2Img.build(base(), source, 1.0), left=24, up=13))
    out = rgb(paths[0])
    # 96 + 24 = 120 wide; 80 + 13 = 93 high, rounded up to 96 (the extra 3 rows go at the bottom).
    assert out.shape[:2] == (96, 120)
    assert np.array_equal(out[13:93, 24:120], np.asarray(source).astype(int))
    assert out[:13, :24].std() > 0
    with Image.open(paths[0]) as image:
        assert "Outpaint: left 24 right 0 up 13 down 3" in image.info["parameters"]


def test_a_picture_too_large_to_work_on_is_scaled_to_fit_the_limits():
    assert edit.working_size(96, 80, 1) == (96, 80)
    assert edit.working_size(1001, 750, 1) == (1000, 744)  # multiples of 8
    width, height = edit.working_size(2400, 1200, 1)
    assert (width, height) == (2048, 1024)
    width, height = edit.working_size(1500, 1000, 4)  # four images of 1.5 MP: over the job's pixel limit
    assert width * height * 4 <= 4 * 1024 * 1024 and abs(width / height - 1.5) < 0.02


# 6. Hires fix -----------------------------------------------------------------------------
def test_hires_fix_size_fields_and_that_it_is_not_the_plain_upscale(studio):
    upscaler = "RealESRGAN_x2plus-tiny.pth"
    plain, _ = studio.txt2img(base(hires_upscaler=upscaler, hires_scale=2))  # original + upscaled twin
    fixed, info = studio.txt2img(base(hires_upscaler=upscaler, hires_scale=2, hires_pass=True, hires_strength=0.5))
    assert len(plain) == 2 and len(fixed) == 1  # the hires fix keeps only the refined image
    twin, refined = rgb(plain[1]), rgb(fixed[0])
    assert twin.shape == refined.shape == (128, 128, 3)
    assert np.abs(twin - refined).mean() > 1
    with Image.open(fixed[0]) as image:
        fields = image.info["parameters"]
    assert "Size: 64x64" in fields and "Denoising strength: 0.5" in fields
    assert "Hires upscale: 2" in fields and f"Hires upscaler: {upscaler}" in fields
    assert info["hires"]["size"] == [128, 128]


def test_hires_fix_latent_with_its_own_steps_and_scale(studio):
    with UNetCalls(studio.store) as calls:
        paths, info = studio.txt2img(base(hires_pass=True, hires_scale=1.5, hires_steps=6, hires_strength=0.5))
    assert calls.count == 4 + 3  # the first pass, then 6 × 0.5
    with Image.open(paths[0]) as image:
        assert image.size == (96, 96)
        assert "Hires upscaler: Latent" in image.info["parameters"] and "Hires steps: 6" in image.info["parameters"]


# 7. LoRA and ControlNet in img2img --------------------------------------------------------
def test_a_lora_and_a_controlnet_change_img2img(studio, tmp_path):
    lora = "danqing-demo-kohya.safetensors"
    plain = rgb(studio.img2img(Img2Img.build(base(), photo(), 0.7))[0][0])
    with_lora = rgb(studio.img2img(Img2Img.build(base(loras=[[lora, 1.0]]), photo(), 0.7))[0][0])
    assert not np.array_equal(plain, with_lora)
    control = tmp_path / "lines.png"
    photo(64, 64).save(control)
    paths, info = studio.img2img(Img2Img.build(base(), photo(), 0.7, units=[
        {"kind": "canny", "image": str(control), "model": DEMO_CANNY, "weight": 2.0}]))
    assert not np.array_equal(plain, rgb(paths[0]))
    assert info["controlnet"][0]["model"] == DEMO_CANNY and paths[1].name.endswith("-canny-map.png")


# 8. A dedicated inpainting model ----------------------------------------------------------
def test_a_9_channel_inpainting_model_inpaints_and_generates(demo_models, tmp_path):
    own = make_studio(demo_models, tmp_path / "out", model=DEMO_MODEL_INPAINT)
    assert own.store.base().unet.config.in_channels == 9
    source, box = photo(), (30, 20, 62, 50)
    paths, _ = own.inpaint(Inpaint.build(Img2Img.build(base(), source, 1.0), box_mask(source.size, box), 0))
    out, original = rgb(paths[0]), np.asarray(source).astype(int)
    far = far_from(box, source.size, 1)
    assert np.array_equal(out[far], original[far]) and not np.array_equal(out[~far], original[~far])
    # Text to image and image to image work on it too (a blank, fully masked canvas).
    assert rgb(own.txt2img(base())[0][0]).shape == (64, 64, 3)
    assert rgb(own.img2img(Img2Img.build(base(), source, 0.5))[0][0]).shape == (64, 64, 3)


# 9. Mask helpers --------------------------------------------------------------------------
def test_crop_box_is_widened_to_the_working_aspect_inside_the_image():
    mask = box_mask((200, 100), (180, 40, 195, 60))
    x0, y0, x1, y1 = masks.crop_box(mask, 4, 1.0)
    assert (x1 - x0) == (y1 - y0) and x1 <= 200 and x0 <= 176 and y0 <= 36 and y1 >= 64


def test_fill_paints_the_hole_with_the_colours_around_it():
    image = Image.new("RGB", (64, 64), (10, 200, 30))
    image.paste((255, 0, 255), (20, 20, 40, 40))
    filled = np.asarray(masks.fill_masked(image, box_mask((64, 64), (20, 20, 40, 40))))
    assert np.abs(filled[25:35, 25:35].astype(int) - (10, 200, 30)).max() <= 2


def test_a_gallery_copy_is_found_by_name_among_the_users_own_images(studio, tmp_path):
    paths, _ = studio.txt2img(base())
    copy = tmp_path / "gradio-cache" / paths[0].name
    copy.parent.mkdir()
    copy.write_bytes(paths[0].read_bytes())
    assert studio.own_output(copy) == paths[0].resolve()
    assert studio.own_output(tmp_path / "nothing-like-it.png") is None
    assert studio.own_output(copy, user="someone-else") is None


def test_the_draft_can_take_the_refinement_pass(studio):
    # Strength 0: the refinement is the VAE round trip at 1024² (a denoising step there costs the
    # tiny model's full-resolution attention 12 s on 2 cores; other tests denoise the pass).
    paths, info = studio.txt2img(base(width=512, height=512, num_inference_steps=2, draft=True, hires_pass=True,
                                      hires_upscaler="RealESRGAN_x4plus-tiny.pth", hires_strength=0.0))
    with Image.open(paths[0]) as image:
        assert image.size == (1024, 1024) and len(paths) == 1  # 256² draft, ×4 ESRGAN, refined
        assert "Size: 256x256" in image.info["parameters"] and "Hires upscale: 4" in image.info["parameters"]
    assert info["draft"] is True


def test_parameters_pick_the_mode_they_came_from():
    from ui.sending import mode_of

    assert mode_of({"Denoising strength": "0.5", "Mask blur": "4", "Inpaint area": "Whole picture"}) == "inpaint"
    assert mode_of({"Denoising strength": "1.0", "Outpaint": "left 8 right 0 up 0 down 0"}) == "outpaint"
    assert mode_of({"Denoising strength": "0.6"}) == "img2img"
    assert mode_of({"Denoising strength": "0.4", "Hires upscale": "2", "Hires upscaler": "Latent"}) == "txt2img"
    assert mode_of({"Steps": "20"}) == "txt2img"


def test_controlnet_with_the_hires_pass_guides_both_passes(studio, tmp_path, monkeypatch):
    from pipelines.requests import Control

    control = tmp_path / "lines.png"
    photo(64, 64).save(control)
    made = []
    original = studio.store.pipeline
    monkeypatch.setattr(studio.store, "pipeline", lambda cls=None, **c: made.append(cls.__name__) or original(cls, **c))
    request = Control.build(base(hires_pass=True, hires_strength=0.5),
                            [{"kind": "canny", "image": str(control), "model": DEMO_CANNY}])
    paths, info = studio.control(request)
    assert made == ["StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline"]
    with Image.open(paths[0]) as image:
        assert image.size == (128, 128)
        assert "Hires upscale: 2" in image.info["parameters"] and "ControlNet 0: " in image.info["parameters"]
    assert paths[1].name.endswith("-canny-map.png") and info["hires"]["size"] == [128, 128]
