"""Image editing costs, side by side in one run (issue 15).

    python -m bench.edit --size 256 --steps 8 --repeats 3 --json edit.json   # CPU-sized
    python -m bench.edit --size 512 --steps 20 --dtype fp16                   # on a GPU: 512 → 1024
    python -m bench.edit --quick                                              # plumbing check, tiny models

Two comparisons, each interleaved (A B C, B C A, ...) with medians:

1. 图生图 at strength 0.5 against text to image at the same step count, through Danqing's
   store, and plain diffusers' ``StableDiffusionImg2ImgPipeline`` (its own ``from_pretrained``)
   doing the same job: seconds and U-Net calls (counted by a forward hook).
2. 高清修复 from ``size`` to ``2 × size`` (latent upscale, second pass at strength 0.4) against
   generating ``2 × size`` directly with the same steps.

Full-size SD 1.5 architecture with random weights (bench/sd15.py), loaded from its real on-disk
format: random weights cost the compute of real ones. Pictures are noise, so only time and
step counts are compared, never quality.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.draft import build_models, sync

PROMPT = "竹林里的大熊猫，国风，水墨画"


class UNetCalls:
    def __init__(self, unet) -> None:
        self.count = 0
        unet.register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.count += 1


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.edit", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="text-to-image and img2img side; hires goes to 2×")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strength", type=float, default=0.5, help="img2img strength")
    p.add_argument("--hires-strength", type=float, default=0.4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--parts", default="img2img,hires", help="which comparisons to run")
    p.add_argument("--quick", action="store_true", help="tiny models, 64², 4 steps, 1 repeat: checks the plumbing only")
    p.add_argument("--model-dir", default=None, help="reuse a folder built by an earlier run")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.repeats = 64, 4, 1

    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    from pipelines.requests import Img2Img, Txt2Img
    from pipelines.store import ModelStore
    from pipelines.store.settings import EngineSettings
    from pipelines.tasks import edit, txt2img

    # 1. Models in their real formats: Danqing's store, and plain diffusers' own load.
    root = Path(args.model_dir or tempfile.mkdtemp(prefix="danqing-edit-"))
    checkpoint = build_models(root, args.quick)
    store = ModelStore(EngineSettings(model=str(checkpoint), models_dir=root / "models", device=args.device,
                                      dtype=args.dtype, allow_download=False))
    base = store.base()
    device, dtype = store.plan.device, store.plan.dtype
    plain = StableDiffusionImg2ImgPipeline.from_pretrained(str(checkpoint), dtype=dtype, safety_checker=None,
                                                           requires_safety_checker=False).to(device)
    plain.set_progress_bar_config(disable=True)
    ours_calls, plain_calls = UNetCalls(base.unet), UNetCalls(plain.unet)
    side = args.size
    source = Image.effect_noise((side, side), 64).convert("RGB")

    def request(width: int, **more) -> Txt2Img:
        return Txt2Img.from_fields(prompt=PROMPT, width=width, height=width, num_inference_steps=args.steps, seed=1234,
                                   **more)

    def timed(fn, calls: UNetCalls) -> dict:
        sync(device)
        before, started = calls.count, time.perf_counter()
        fn()
        sync(device)
        return {"seconds": time.perf_counter() - started, "unet_calls": calls.count - before}

    variants = {}
    if "img2img" in args.parts:
        variants.update({
            "txt2img": (lambda: txt2img.run(store, request(side)), ours_calls),
            f"img2img {args.strength}": (lambda: edit.img2img(store, Img2Img.build(request(side), source, args.strength)),
                                         ours_calls),
            f"plain diffusers img2img {args.strength}": (lambda: plain(
                PROMPT, image=source, strength=args.strength, num_inference_steps=args.steps, guidance_scale=7.0,
                generator=torch.Generator("cpu").manual_seed(1234)), plain_calls),
        })
    if "hires" in args.parts:
        variants.update({
            f"hires fix {side}→{2 * side} (latent, {args.hires_strength})": (lambda: txt2img.run(
                store, request(side, hires_pass=True, hires_scale=2, hires_strength=args.hires_strength)), ours_calls),
            f"direct {2 * side}²": (lambda: txt2img.run(store, request(2 * side)), ours_calls),
        })

    # 2. Warm up each path once (kernel selection), then rotate the order every round.
    for fn, calls in variants.values():
        timed(fn, calls)
    names = list(variants)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_no in range(args.repeats):
        order = names[round_no % len(names):] + names[:round_no % len(names)]
        for name in order:
            runs[name].append(timed(*variants[name]))

    # 3. Medians and ratios.
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus" + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
        "device": str(device), "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "quick": args.quick, "size": side, "steps": args.steps,
        "strength": args.strength, "hires_strength": args.hires_strength, "repeats": args.repeats,
        "variants": {name: {"seconds": statistics.median(r["seconds"] for r in rows),
                            "unet_calls": rows[0]["unet_calls"], "runs": rows} for name, rows in runs.items()},
    }
    print(f"\n{side}², {args.steps} steps, {device}/{result['dtype']}, median of {args.repeats}"
          + (" (QUICK: tiny models)" if args.quick else ""))
    print(f"{'variant':48} {'seconds':>9} {'U-Net calls':>12}")
    for name, row in result["variants"].items():
        print(f"{name:48} {row['seconds']:9.2f} {row['unet_calls']:12d}")
    seconds = {name: row["seconds"] for name, row in result["variants"].items()}
    if "img2img" in args.parts:
        result["img2img_over_txt2img"] = seconds[f"img2img {args.strength}"] / seconds["txt2img"]
        result["plain_over_danqing_img2img"] = seconds[f"plain diffusers img2img {args.strength}"] / seconds[f"img2img {args.strength}"]
        print(f"img2img / txt2img: {result['img2img_over_txt2img']:.2f}; "
              f"plain diffusers img2img / Danqing img2img: {result['plain_over_danqing_img2img']:.2f}")
    if "hires" in args.parts:
        hires = next(name for name in seconds if name.startswith("hires fix"))
        result["direct_over_hires"] = seconds[f"direct {2 * side}²"] / seconds[hires]
        print(f"direct / hires fix: {result['direct_over_hires']:.2f}  (above 1: the hires fix is faster)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
