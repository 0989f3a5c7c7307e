"""Tab switch: text-to-image → Canny ControlNet → text-to-image on one store.

    python -m bench.tabs --size 256 --steps 2

Full-size SD 1.5 architecture and a full-size SD 1.5 ControlNet with random weights (same
compute as real ones). For each switch: seconds (the first visit includes loading) and the
bytes resident in the store afterwards — the base U-Net, VAE and text encoder must stay single,
with the ControlNet added beside them, not a second copy of the base.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.tabs", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--model-dir", default=None, help="reuse a folder built by an earlier run")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from diffusers import ControlNetModel, UNet2DConditionModel

    from bench.sd15 import build_sd15
    from pipelines.tasks import controlnet
    from pipelines.tasks import txt2img
    from pipelines.requests import Txt2Img
    from pipelines.store.settings import EngineSettings
    from pipelines.store import ModelStore

    # 1. Models: the SD 1.5 folder and a ControlNet built from its U-Net, in models/controlnet.
    root = Path(args.model_dir or tempfile.mkdtemp(prefix="danqing-bench-"))
    folder = build_sd15(root / "sd15-random")
    cn_dir = root / "models" / "controlnet" / "sd15-canny-random"
    if not (cn_dir / "config.json").exists():
        ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(folder / "unet")).save_pretrained(cn_dir)
    store = ModelStore(EngineSettings(model=str(folder), models_dir=root / "models", device=args.device, dtype=args.dtype))
    params = Txt2Img.from_fields(prompt="竹林里的大熊猫", width=args.size, height=args.size,
                              num_inference_steps=args.steps, seed=1, sampler="PNDM")
    edges = Image.fromarray((np.random.RandomState(0).rand(args.size, args.size, 3) > 0.9).astype(np.uint8) * 255)

    def resident() -> dict:
        rows = store.resident_models()
        return {"bytes": sum(r["bytes"] for r in rows), "unets": sum(r["kind"] == "unet" for r in rows),
                "models": [f"{r['kind']}:{r['name']}" for r in rows]}

    # 2. Visit the tabs in turn.
    steps = []
    for name, job in (
        ("txt2img (first: loads the base)", lambda: txt2img.run(store, params)),
        ("canny (first: loads the ControlNet)", lambda: controlnet.run(store, controlnet.validate_control(
            params, (controlnet.ControlUnit(model="sd15-canny-random", image=edges),)))),
        ("txt2img again", lambda: txt2img.run(store, params)),
        ("canny again", lambda: controlnet.run(store, controlnet.validate_control(
            params, (controlnet.ControlUnit(model="sd15-canny-random", image=edges),)))),
    ):
        started = time.perf_counter()
        job()
        steps.append({"step": name, "seconds": round(time.perf_counter() - started, 2), **resident()})
    print(f"\n{'step':38} {'seconds':>8} {'resident MiB':>13} {'U-Nets':>7}")
    for row in steps:
        print(f"{row['step']:38} {row['seconds']:8.2f} {row['bytes'] / 2**20:13.0f} {row['unets']:7d}")
    result = {"date": time.strftime("%Y-%m-%d"), "size": args.size, "steps": args.steps, "tabs": steps}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
