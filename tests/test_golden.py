"""The golden set: outputs recorded at the reference commit (tests/golden/, written by
``python tests/golden_cases.py record``), which every later change of structure must reproduce:
text to image with three samplers, a LoRA and clip skip, Canny, depth, the draft mode, the
latent hires pass, 图生图, 局部重绘, 扩图 and a x4 upscale. Pixels are compared on the stored
64×64 crops within one level, sizes and each PNG's A1111 parameters text exactly.

The cases are chosen to hold on any x86 CPU (AVX2 or AVX-512, either vendor): the second test
runs them again under other float rounding (generic kernels, one thread, MKL's compatible path),
which must give the same pixels — a case that only holds on the recording machine fails there.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from golden_cases import GOLDEN, HASHES, ROUNDING_ENVS, cases, check_elsewhere, comparable, make_golden_studio, pixels

EXPECTED = json.loads((GOLDEN / "golden.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def golden_studio(demo_models, tmp_path_factory):
    return make_golden_studio(demo_models, tmp_path_factory.mktemp("golden-out"))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_outputs_match_the_golden_set(golden_studio, tmp_path, name):
    expected = EXPECTED[name]
    paths, _ = cases(golden_studio, tmp_path)[name]()
    assert len(paths) == len(expected)
    listed = {row["name"]: row["hash"] for row in golden_studio.loras()}
    for path, want in zip(paths, expected):
        with Image.open(path) as image:
            assert [image.width, image.height] == want["size"]
            text = image.info.get("parameters", "")
        # A LoRA's short hash must be its file's own; the rest of the text exactly as recorded.
        for lora_name, digest in HASHES.findall(text):
            if lora_name in listed:
                assert digest == listed[lora_name]
        assert comparable(text) == comparable(want["parameters"])
        got = pixels(path)
        ref = np.asarray(Image.open(GOLDEN / want["crop"]).convert("RGB")).astype(int)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1, f"{name}: pixels moved by {np.abs(got - ref).max()}"


@pytest.mark.slow
@pytest.mark.app  # a child process
@pytest.mark.parametrize("env", ROUNDING_ENVS, ids=lambda env: ",".join(f"{k}={v}" for k, v in env.items()))
def test_the_golden_set_holds_under_other_float_rounding(demo_models, env):
    worst = check_elsewhere(demo_models, env)
    assert set(worst) == set(EXPECTED)
    assert {name: level for name, level in worst.items() if not 0 <= level <= 1} == {}
