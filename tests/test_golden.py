"""The golden set: outputs recorded before the engine was restructured (tests/golden/), which
every later change of structure must reproduce — text to image with two samplers, a LoRA,
Canny, depth, the draft mode and a x4 upscale. Pixels are compared on the stored 64×64 crops
(within one level, for other CPUs' float rounding), sizes exactly, and each PNG's A1111
parameters text exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_studio
from pipelines.requests import Control, Txt2Img, Upscale

GOLDEN = Path(__file__).parent / "golden"
HASHES = re.compile(r"([\w.-]+): ([0-9a-f]{10})")
BASE = dict(prompt="竹林里的熊猫，水墨画", negative_prompt="模糊", width=64, height=64, num_inference_steps=3,
            guidance_scale=7.0, seed=1234)


def control_image(tmp: Path) -> str:
    grid = np.kron(np.eye(8, dtype=np.uint8) * 255, np.ones((8, 8), np.uint8))
    path = tmp / "control.png"
    Image.fromarray(grid).convert("RGB").save(path)
    return str(path)


def cases(studio, tmp: Path) -> dict:
    upscaler = studio.upscalers()[0]
    lora = "danqing-demo-kohya.safetensors"  # the golden set's LoRA (the list now starts with few-step ones)
    ctl = control_image(tmp)
    source = Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype("uint8"))

    def t2i(**extra):
        return lambda: studio.txt2img(Txt2Img.from_fields({**BASE, **extra}))

    def control(units, resize_mode="crop"):
        return lambda: studio.control(Control.build(Txt2Img.from_fields({**BASE, "sampler": "DDIM"}), units, resize_mode))

    return {
        "txt2img-dpmpp2m-karras": t2i(sampler="DPM++ 2M Karras"),
        "txt2img-euler-a": t2i(sampler="Euler a"),
        "txt2img-lora": t2i(sampler="Euler", loras=[[lora, 0.8]]),
        "canny": control([{"kind": "canny", "image": ctl, "model": "demo-canny", "weight": 1.0,
                           "low_threshold": 100, "high_threshold": 200}]),
        "depth": control([{"kind": "depth", "image": ctl, "model": "demo-depth.safetensors", "weight": 0.8,
                           "guidance_start": 0.1, "guidance_end": 0.9, "estimator": studio.depth_estimators()[0]}],
                         "fit"),
        "draft": t2i(width=64, height=96, sampler="DPM++ 2M", draft=True, hires_upscaler=upscaler),
        "upscale-x4": lambda: studio.upscale_images([source], Upscale(upscaler, 4)),
    }


@pytest.fixture(scope="module")
def golden_studio(demo_models, tmp_path_factory):
    return make_studio(demo_models, tmp_path_factory.mktemp("golden-out"))


@pytest.mark.parametrize("name", list(json.loads((GOLDEN / "golden.json").read_text(encoding="utf-8"))))
def test_outputs_match_the_golden_set(golden_studio, tmp_path, name):
    expected = json.loads((GOLDEN / "golden.json").read_text(encoding="utf-8"))[name]
    paths, _ = cases(golden_studio, tmp_path)[name]()
    assert len(paths) == len(expected)
    for path, want in zip(paths, expected):
        with Image.open(path) as image:
            assert [image.width, image.height] == want["size"]
            text = image.info.get("parameters", "")
            # The demo LoRA file is written anew with each bundle (same weights, other bytes):
            # its short hash must be the file's own, the rest of the text exactly as recorded.
            for lora_name, digest in HASHES.findall(text):
                listed = {row["name"]: row["hash"] for row in golden_studio.loras()}
                assert digest == listed[lora_name]
            assert HASHES.sub(r"\1: -", text) == HASHES.sub(r"\1: -", want["parameters"])
            got = np.asarray(image.convert("RGB"))[:64, :64].astype(int)
        ref = np.asarray(Image.open(GOLDEN / want["crop"]).convert("RGB")).astype(int)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1, f"{name}: pixels moved by {np.abs(got - ref).max()}"
