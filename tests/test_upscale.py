"""ESRGAN super-resolution: published weight layouts load as published, the tiler stitches what
the whole image would give, every PIL mode works, memory and safety limits hold."""

import pathlib
import sys
import threading
import types

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_studio
from pipelines.errors import DanqingError, JobCancelled, ModelError, ParamError
from pipelines.formats.esrgan import RRDBNet, SRVGGNetCompact, build_upscaler, load_upscaler_file, read_state_dict
from pipelines.tasks import upscale as up
from pipelines.tasks.upscale import list_upscalers, load_upscaler, upscale
from pipelines.requests import Upscale

X4 = "RealESRGAN_x4plus-tiny.pth"
X2 = "RealESRGAN_x2plus-tiny.pth"
COMPACT = "realesr-general-x4v3-tiny.safetensors"
CPU = torch.device("cpu")


def picture(width=40, height=32, mode="RGB", seed=0) -> Image.Image:
    """A smooth random picture (like a photo, unlike white noise)."""
    rng = np.random.default_rng(seed)
    small = (rng.random((height // 4, width // 4, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC).convert(mode)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.fixture
def fresh_store(demo_models, tmp_path):
    """A store of its own, for tests that patch or count what it loads."""
    return make_studio(demo_models, tmp_path / "out").store


# 1. Published layouts ----------------------------------------------------------------------
def test_rrdbnet_keys_are_the_published_ones():
    with torch.device("meta"):
        x4 = RRDBNet(num_feat=64, num_block=23).state_dict()
        x2 = RRDBNet(scale=2, num_feat=64, num_block=23).state_dict()
        anime = RRDBNet(num_feat=64, num_block=6).state_dict()
    published = {
        "conv_first.weight", "conv_first.bias", "body.0.rdb1.conv1.weight", "body.0.rdb1.conv1.bias",
        "body.0.rdb3.conv5.weight", "body.22.rdb2.conv4.bias", "conv_body.weight", "conv_up1.weight",
        "conv_up2.weight", "conv_hr.weight", "conv_hr.bias", "conv_last.weight", "conv_last.bias",
    }
    assert published <= x4.keys()
    assert len(x4) == 702  # RealESRGAN_x4plus.pth: 23 blocks x 3 RDBs x 5 convs x 2 + 6 convs x 2
    assert all(k.split(".")[0] in {"conv_first", "body", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"} for k in x4)
    assert tuple(x4["conv_first.weight"].shape) == (64, 3, 3, 3)
    assert tuple(x4["body.0.rdb1.conv5.weight"].shape) == (64, 64 + 4 * 32, 3, 3)
    assert tuple(x2["conv_first.weight"].shape) == (64, 12, 3, 3)  # pixel-unshuffled input
    assert x2.keys() == x4.keys()
    assert len(anime) == 6 * 30 + 12 and "body.5.rdb3.conv5.bias" in anime


def test_srvgg_keys_are_the_published_ones():
    with torch.device("meta"):
        general = SRVGGNetCompact(num_feat=64, num_conv=32).state_dict()
        video = SRVGGNetCompact(num_feat=64, num_conv=16).state_dict()
    published = {"body.0.weight", "body.0.bias", "body.1.weight", "body.2.weight", "body.3.weight", "body.66.weight", "body.66.bias"}
    assert published <= general.keys() and len(general) == 33 * 2 + 33 + 2  # 34 convs, 33 PReLUs
    assert tuple(general["body.1.weight"].shape) == (64,)  # PReLU, one slope per channel
    assert tuple(general["body.66.weight"].shape) == (48, 64, 3, 3)  # 3 * 4² for the pixel shuffle
    assert max(int(k.split(".")[1]) for k in video) == 34 and "body.35.weight" not in video
    assert not any(k.startswith("upsampler") for k in general)


def test_sizes_come_from_the_weights_not_the_file_name(tmp_path):
    torch.manual_seed(1)
    cases = [
        (RRDBNet(scale=2, num_feat=16, num_block=3, num_grow_ch=8), "RRDBNet", 2),
        (RRDBNet(scale=4, num_feat=12, num_block=2, num_grow_ch=4), "RRDBNet", 4),
        (SRVGGNetCompact(num_feat=16, num_conv=3, upscale=2), "SRVGGNetCompact", 2),
    ]
    for net, arch, scale in cases:
        path = tmp_path / "RealESRGAN_x4plus_anime_6B.pth"  # wrong on purpose
        torch.save({"params_ema": net.state_dict()}, path)
        model = load_upscaler_file(path, path.name, CPU, torch.float32)
        assert (model.arch, model.scale) == (arch, scale)
        assert model.net.state_dict().keys() == net.state_dict().keys()
        probe = torch.rand(1, 3, 8, 10)
        with torch.inference_mode():
            assert torch.allclose(model(probe), net.eval()(probe), atol=1e-5)


def test_wrappers_and_safetensors_load_the_same_weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    state = RRDBNet(scale=4, num_feat=8, num_block=1, num_grow_ch=4).state_dict()
    torch.save({"params_ema": state, "params": {k: v * 0 for k, v in state.items()}}, tmp_path / "ema.pth")
    torch.save({"params": state}, tmp_path / "params.pth")
    torch.save(state, tmp_path / "bare.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "st.safetensors"))
    for name in ("ema.pth", "params.pth", "bare.pth", "st.safetensors"):
        loaded = read_state_dict(tmp_path / name, name)
        assert loaded.keys() == state.keys(), name
        assert all(torch.equal(loaded[k], state[k]) for k in state), name  # params_ema wins


def test_old_esrgan_layout_is_renamed():
    torch.manual_seed(3)
    net = RRDBNet(scale=4, num_feat=8, num_block=2, num_grow_ch=4).eval()
    old = {}
    for key, value in net.state_dict().items():
        parts = key.split(".")
        if parts[0] == "body":
            old[f"model.1.sub.{parts[1]}.{parts[2].upper()}.{parts[3]}.0.{parts[4]}"] = value
        else:
            index = {"conv_first": 0, "conv_up1": 3, "conv_up2": 6, "conv_hr": 8, "conv_last": 10}.get(parts[0])
            old[f"model.{index}.{parts[1]}" if index is not None else f"model.1.sub.2.{parts[1]}"] = value
    model = build_upscaler(old, "4x-old.pth")
    probe = torch.rand(1, 3, 6, 6)
    with torch.inference_mode():
        assert torch.allclose(model(probe), net(probe), atol=1e-5)


# 2. Safety ---------------------------------------------------------------------------------
class Payload:
    """Unpickling this would create a file: proof of code execution."""

    marker: pathlib.Path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickles_with_objects_are_refused_never_run(tmp_path):
    payload = Payload()
    payload.marker = tmp_path / "executed"
    torch.save({"params": {"conv_first.weight": torch.zeros(1)}, "extra": payload}, tmp_path / "evil.pth")
    with pytest.raises(ModelError) as err:
        read_state_dict(tmp_path / "evil.pth", "evil.pth")
    assert err.value.code == "upscaler_unsafe_file"
    assert not payload.marker.exists()


def test_corrupt_and_unknown_files(tmp_path, monkeypatch):
    (tmp_path / "junk.pth").write_bytes(b"not a model at all")
    torch.save({"params_ema": RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).state_dict()}, tmp_path / "ok.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "ok.pth").read_bytes()[:300])
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    for name in ("junk.pth", "cut.pth", "cut.safetensors"):
        with pytest.raises(ModelError) as err:
            read_state_dict(tmp_path / name, name)
        assert err.value.code == "upscaler_file_corrupt", name
    monkeypatch.setitem(sys.modules, "spandrel", None)  # as if not installed
    partial = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).state_dict()
    del partial["body.0.rdb2.conv3.bias"]  # the RRDBNet keys, one missing: strict load fails
    for state in ({"encoder.weight": torch.zeros(2, 2)}, {"conv_first.weight": torch.zeros(8, 5, 3, 3)}, partial):
        with pytest.raises(ModelError) as err:
            build_upscaler(state, "other.pth")
        assert err.value.code == "upscaler_unknown_arch"


def test_unknown_architectures_go_to_spandrel_when_installed(monkeypatch):
    class ImageModelDescriptor:
        def __init__(self, model):
            self.model, self.scale, self.input_channels, self.output_channels = model, 4, 3, 3
            self.size_requirements = types.SimpleNamespace(multiple_of=8)
            self.architecture = types.SimpleNamespace(name="SwinIR")

    received = {}

    class ModelLoader:
        def load_from_state_dict(self, state):
            received.update(state)
            return ImageModelDescriptor(SRVGGNetCompact(num_feat=4, num_conv=1))

    monkeypatch.setitem(sys.modules, "spandrel", types.SimpleNamespace(ModelLoader=ModelLoader, ImageModelDescriptor=ImageModelDescriptor))
    model = build_upscaler({"layers.0.attn.qkv.weight": torch.zeros(3, 3)}, "swinir.pth")
    assert (model.arch, model.scale, model.multiple) == ("spandrel:SwinIR", 4, 8)
    assert "layers.0.attn.qkv.weight" in received
    assert model(torch.rand(1, 3, 5, 7)).shape == (1, 3, 20, 28)  # padded to 8, cropped back


# 3. Parameters and limits ------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, code",
    [
        (dict(scale=3), "bad_upscale_scale"),
        (dict(scale="x"), "not_an_integer"),
        (dict(tile=8), "bad_tile_size"),
        (dict(tile=100000), "bad_tile_size"),
        (dict(tile_overlap=-1), "out_of_range"),
        (dict(upscaler=""), "bad_model_name"),
    ],
)
def test_bad_parameters_are_refused(raw, code):
    with pytest.raises(ParamError) as err:
        Upscale.from_fields(**{"upscaler": X4, **raw})
    assert err.value.code == code


def test_bad_names_are_refused(fresh_store):
    for name, code in (("../demo-v2/README.txt", "bad_model_name"), ("missing.pth", "unknown_model_name")):
        with pytest.raises(ParamError) as err:
            upscale(fresh_store, picture(), Upscale(name))
        assert err.value.code == code


def test_too_large_inputs_are_refused_before_any_work(fresh_store, monkeypatch):
    monkeypatch.setattr(up, "MAX_UPSCALE_INPUT_PIXELS", 40 * 32 - 1)
    steps = []
    with pytest.raises(ParamError) as err:
        upscale(fresh_store, picture(40, 32), Upscale(X4), on_step=lambda *a: steps.append(a))
    assert err.value.code == "upscale_image_too_large"
    assert fresh_store.resident_models() == [] and steps == []
    assert up.MAX_UPSCALE_INPUT_PIXELS == 40 * 32 - 1 and 4096 * 4096 > 40 * 32  # the real cap is the default


def test_list_and_resident(store):
    assert {X4, X2, COMPACT} <= set(list_upscalers(store))
    upscale(store, picture(16, 16), Upscale(COMPACT, scale=4))
    rows = [r for r in store.resident_models() if r["kind"] == "upscaler"]
    assert any(r["name"] == COMPACT and r["bytes"] > 0 for r in rows)
    assert load_upscaler(store, COMPACT) is load_upscaler(store, COMPACT)  # cached, loaded once


# 4. Tiling ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [X4, X2, COMPACT])
def test_tiled_matches_untiled(store, name):
    image = picture(44, 34)  # not a multiple of the tile, odd halves for the x2 unshuffle
    whole = upscale(store, image, Upscale(name, scale=4, tile=0))
    tiled = upscale(store, image, Upscale(name, scale=4, tile=32, tile_overlap=16))
    assert whole.size == tiled.size == (176, 136) and whole.mode == "RGB"
    assert pixels(whole).std() > 5  # real values, not a clipped flat image
    assert np.abs(pixels(whole) - pixels(tiled)).max() <= 2


def test_progress_and_cancel(store):
    steps = []
    upscale(store, picture(40, 32), Upscale(X4, scale=4, tile=32, tile_overlap=8), on_step=lambda d, t: steps.append((d, t)))
    assert steps == [(1, 2), (2, 2)]
    cancel = threading.Event()
    with pytest.raises(JobCancelled):
        upscale(store, picture(40, 32), Upscale(X4, tile=32), cancel=cancel, on_step=lambda d, t: cancel.set())


def test_simulated_out_of_memory_halves_the_tile(fresh_store):
    image = picture(48, 40)
    reference = upscale(fresh_store, image, Upscale(COMPACT, tile=0))
    model = load_upscaler(fresh_store, COMPACT)
    real_forward, seen = model.forward, []

    def forward(x):
        seen.append(max(x.shape[-2:]))
        if seen[-1] > 40:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(x)

    model.forward = forward
    result = upscale(fresh_store, image, Upscale(COMPACT, tile=128, tile_overlap=8))
    assert seen[0] == 48 and max(seen) > 40 and all(s <= 40 for s in seen[-4:])  # 128 -> 64 -> 32
    assert np.abs(pixels(result) - pixels(reference)).max() <= 2

    def always_oom(x):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")

    model.forward = always_oom
    with pytest.raises(DanqingError) as err:
        upscale(fresh_store, image, Upscale(COMPACT, tile=64))
    assert err.value.code == "out_of_memory"
    def broken(x):
        raise RuntimeError("shape mismatch")

    model.forward = broken
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not retried
        upscale(fresh_store, image, Upscale(COMPACT))


# 5. Scales and image modes ------------------------------------------------------------------
def test_x2_from_a_x4_model_is_a_lanczos_of_the_x4_result(store):
    image = picture(30, 22)
    x4 = upscale(store, image, Upscale(X4, scale=4))
    x2 = upscale(store, image, Upscale(X4, scale=2))
    assert x2.size == (60, 44)
    assert np.array_equal(pixels(x2), pixels(x4.resize((60, 44), Image.Resampling.LANCZOS)))


def test_x4_from_a_x2_model_runs_it_twice(store):
    steps = []
    out = upscale(store, picture(21, 15), Upscale(X2, scale=4, tile=0), on_step=lambda d, t: steps.append((d, t)))
    assert out.size == (84, 60) and steps == [(1, 2), (2, 2)]


def test_rgba_keeps_its_alpha(store):
    image = picture(32, 24, "RGBA")
    alpha = Image.linear_gradient("L").resize((32, 24))
    image.putalpha(alpha)
    out = upscale(store, image, Upscale(COMPACT, scale=2))
    assert out.mode == "RGBA" and out.size == (64, 48)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha.resize((64, 48), Image.Resampling.LANCZOS)))
    rgb = upscale(store, image.convert("RGB"), Upscale(COMPACT, scale=2))
    assert np.array_equal(pixels(out.convert("RGB")), pixels(rgb))


def test_gray_and_16_bit_inputs(store):
    gray = picture(24, 16, "L")
    as16 = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)  # full 16-bit range
    as32 = Image.fromarray(np.asarray(gray).astype(np.int32) * 257)
    palette = picture(24, 16).convert("P")
    outs = [upscale(store, im, Upscale(COMPACT, scale=2)) for im in (gray, as16, as32, palette)]
    assert (as16.mode, as32.mode) == ("I;16", "I") and all(o.mode == "RGB" and o.size == (48, 32) for o in outs)
    assert np.array_equal(pixels(outs[0]), pixels(outs[1]))
    assert np.array_equal(pixels(outs[0]), pixels(outs[2]))
    with pytest.raises(ParamError) as err:
        upscale(store, None, Upscale(COMPACT))
    assert err.value.code == "upscale_no_image"
