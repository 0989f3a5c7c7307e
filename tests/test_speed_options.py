"""The fast-path switches: each keeps the output (within rounding) and shows in 系统信息."""

import numpy as np
import pytest

from pipelines.tasks import txt2img
from pipelines.errors import ParamError
from pipelines.outputs import OutputWriter
from pipelines.requests import Txt2Img
from pipelines.studio import Studio
from pipelines.store.settings import EngineSettings
from pipelines.store import ModelStore


def studio_with(demo_models, tmp_path, **speed):
    settings = EngineSettings(model="danqing-demo-zh", models_dir=demo_models, outputs_dir=tmp_path,
                              device="cpu", demo=True, allow_download=False, **speed)
    return Studio(ModelStore(settings), OutputWriter(tmp_path))


def image(store, **kwargs):
    params = Txt2Img.from_fields(prompt="竹林里的熊猫", width=64, height=64, num_inference_steps=3, seed=21, **kwargs)
    return np.asarray(txt2img.run(store, params).images[0]).astype(int)


@pytest.mark.parametrize(
    "speed, attention",
    [
        ({"channels_last": True}, "sdpa"),
        ({"attention": "naive"}, "naive"),
        ({"fuse_qkv": True}, "FusedAttnProcessor2_0"),
        ({"vae_tiling": True}, "sdpa"),
    ],
)
def test_option_keeps_the_image(store, demo_models, tmp_path, speed, attention):
    fast = studio_with(demo_models, tmp_path, **speed)
    assert np.abs(image(fast.store) - image(store)).max() <= 2
    info = fast.system_info()
    assert info["attention"] == attention
    for key, value in speed.items():
        assert info["speed_options"][key] == value


def test_fused_qkv_refuses_loras_instead_of_ignoring_them(demo_models, tmp_path):
    fast = studio_with(demo_models, tmp_path, fuse_qkv=True)
    with pytest.raises(ParamError) as info:
        image(fast.store, loras=[["danqing-demo-kohya.safetensors", 1.0]])
    assert info.value.code == "lora_needs_unfused_qkv"
