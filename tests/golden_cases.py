"""The golden set's cases, and the command that records or checks them.

The golden set (tests/golden/) holds outputs recorded at a commit whose behaviour is the
reference; every later change of structure must reproduce them. Each case is chosen so that its
pixels do not depend on the CPU's float rounding: a case is accepted only when it gives the
same pixels (within one level) under other kernels and thread counts on the recording machine
(``check`` under ``ROUNDING_ENVS``), which is what an AVX2 machine, an AVX-512 one, or another
vendor's MKL path changes. (The first set's ControlNet cases used DDIM, whose clipped x0
prediction amplified rounding by tens of levels on the random demo ControlNet; they use Euler
and DPM++ 2M now.)

    python tests/golden_cases.py record   # at the reference commit only: writes tests/golden/
    python tests/golden_cases.py check    # compares against the recordings, prints the worst level
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOLDEN = Path(__file__).parent / "golden"
HASHES = re.compile(r"([\w.-]+): ([0-9a-f]{10})")
BASE = dict(prompt="竹林里的熊猫，水墨画", negative_prompt="模糊", width=64, height=64, num_inference_steps=3,
            guidance_scale=7.0, seed=1234)
CROP = 64
# Other float rounding on the same machine: the generic kernels instead of the AVX-512 ones, one
# thread instead of two, MKL's compatible code path.
ROUNDING_ENVS = ({"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"},)


def control_image(tmp: Path) -> str:
    grid = np.kron(np.eye(8, dtype=np.uint8) * 255, np.ones((8, 8), np.uint8))
    path = tmp / "control.png"
    Image.fromarray(grid).convert("RGB").save(path)
    return str(path)


def source_image(seed: int = 0, size: tuple[int, int] = (48, 48)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8"))


def mask_image(tmp: Path) -> str:
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 20:44] = 255
    path = tmp / "mask.png"
    Image.fromarray(mask).save(path)
    return str(path)


def cases(studio, tmp: Path) -> dict:
    """name -> a function returning (saved paths, info) of one job."""
    from pipelines.requests import Control, Img2Img, Inpaint, Outpaint, Txt2Img, Upscale

    upscaler = studio.upscalers()[0]
    lora = "danqing-demo-kohya.safetensors"  # the golden set's LoRA (the list starts with few-step ones)
    ctl = control_image(tmp)
    source = source_image()
    photo = tmp / "photo.png"
    source_image(3, (64, 64)).save(photo)

    def t2i(**extra):
        return lambda: studio.txt2img(Txt2Img.from_fields({**BASE, **extra}))

    def control(units, sampler, resize_mode="crop"):
        return lambda: studio.control(Control.build(Txt2Img.from_fields({**BASE, "sampler": sampler}), units, resize_mode))

    def edit(**extra):
        return Img2Img.build(Txt2Img.from_fields({**BASE, "sampler": "Euler", **extra}), str(photo), 0.6)

    return {
        "txt2img-dpmpp2m-karras": t2i(sampler="DPM++ 2M Karras"),
        "txt2img-euler-a": t2i(sampler="Euler a"),
        "txt2img-ddim": t2i(sampler="DDIM"),
        "txt2img-lora": t2i(sampler="Euler", loras=[[lora, 0.8]]),
        "txt2img-clip-skip": t2i(sampler="Euler", clip_skip=2),
        "canny": control([{"kind": "canny", "image": ctl, "model": "demo-canny", "weight": 1.0,
                           "low_threshold": 100, "high_threshold": 200}], "Euler"),
        "depth": control([{"kind": "depth", "image": ctl, "model": "demo-depth.safetensors", "weight": 0.8,
                           "guidance_start": 0.1, "guidance_end": 0.9, "estimator": studio.depth_estimators()[0]}],
                         "DPM++ 2M", "fit"),
        "draft": t2i(width=64, height=96, sampler="DPM++ 2M", draft=True, hires_upscaler=upscaler),
        "hires-latent": t2i(sampler="Euler", hires_pass=True, hires_scale=1.5, hires_strength=0.5),
        "img2img": lambda: studio.img2img(edit()),
        "inpaint": lambda: studio.inpaint(Inpaint.build(edit(), mask_image(tmp), 4, "original")),
        "outpaint": lambda: studio.outpaint(Outpaint.build(edit(), right=16, fill="fill")),
        "upscale-x4": lambda: studio.upscale_images([source], Upscale(upscaler, 4)),
    }


def make_golden_studio(models: Path, outputs: Path):
    from conftest import make_studio

    return make_studio(models, outputs)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))[:CROP, :CROP].astype(int)


def comparable(text: str) -> str:
    """A parameters text with its short file hashes blanked (the demo LoRA file is written anew
    with each bundle: same weights, other bytes)."""
    return HASHES.sub(r"\1: -", text)


def record(models: Path) -> None:
    """Write tests/golden/ from this commit's outputs (only at the reference commit)."""
    GOLDEN.mkdir(exist_ok=True)
    for old in GOLDEN.glob("*.png"):
        old.unlink()
    table = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        studio = make_golden_studio(models, tmp / "out")
        for name, job in cases(studio, tmp).items():
            paths, _ = job()
            rows = []
            for i, path in enumerate(paths):
                crop = f"{name}-{i}.png"
                Image.fromarray(pixels(path).astype(np.uint8)).save(GOLDEN / crop)
                with Image.open(path) as image:
                    rows.append({"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": list(image.size),
                                 "crop": crop, "parameters": image.info.get("parameters", ""),
                                 "suffix": path.stem[len(paths[0].stem) + 1:] if i else ""})
            table[name] = rows
    (GOLDEN / "golden.json").write_text(json.dumps(table, indent=1, ensure_ascii=False), encoding="utf-8")


def check(models: Path) -> dict[str, int]:
    """Each case's worst pixel difference from its recording (-1: sizes or texts differ)."""
    expected = json.loads((GOLDEN / "golden.json").read_text(encoding="utf-8"))
    worst = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        studio = make_golden_studio(models, tmp / "out")
        for name, job in cases(studio, tmp).items():
            paths, _ = job()
            level = 0
            for path, want in zip(paths, expected[name]):
                with Image.open(path) as image:
                    same = list(image.size) == want["size"] and \
                        comparable(image.info.get("parameters", "")) == comparable(want["parameters"])
                ref = np.asarray(Image.open(GOLDEN / want["crop"]).convert("RGB")).astype(int)
                got = pixels(path)
                level = max(level, int(np.abs(got - ref).max()) if same and got.shape == ref.shape else -1)
            worst[name] = level if len(paths) == len(expected[name]) else -1
    return worst


def check_elsewhere(models: Path, env: dict) -> dict[str, int]:
    """``check`` in a child process with other float rounding (``env``)."""
    out = subprocess.run([sys.executable, __file__, "check", "--models", str(models)], cwd=ROOT,
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    import argparse

    sys.path.insert(0, str(Path(__file__).parent))
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["record", "check"])
    parser.add_argument("--models", default=None, help="a demo bundle folder (default: generate one)")
    args = parser.parse_args(argv)
    from pipelines.demo import ensure_demo_bundle

    models = Path(args.models) if args.models else ensure_demo_bundle(Path(tempfile.mkdtemp()))
    if args.action == "record":
        record(models)
        unstable = {}
        for env in ROUNDING_ENVS:
            for name, level in check_elsewhere(models, env).items():
                if level > 1 or level < 0:
                    unstable[name] = level
        print(json.dumps({"unstable": unstable}))
    else:
        print(json.dumps(check(models)))


if __name__ == "__main__":
    main(sys.argv[1:])
