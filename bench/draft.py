"""Draft-and-upscale against direct generation, side by side in one run.

    python -m bench.draft --steps 20 --repeats 3 --json draft.json   # the real comparison
    python -m bench.draft --quick                                     # plumbing check, tiny models

(A) draft: generate at 256² and upscale x4 with RealESRGAN_x4plus (tiled), the Rapid Diffusion
recipe; (B) direct: generate at 1024² with the same steps. Both use the full-size SD 1.5
architecture (bench/sd15.py) and a full-size RRDBNet (64 features, 23 blocks) with random
weights, saved in their real formats in a temporary folder and loaded through Danqing's own
store, text-to-image and upscale code: random weights cost the same compute as real ones. Runs
are interleaved A B A B and the medians reported, with the ratio B/A (above 1: the draft wins).
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

PROMPT = "竹林里的大熊猫，国风，水墨画"
UPSCALER = "RealESRGAN_x4plus.pth"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_models(root: Path, quick: bool) -> Path:
    """The checkpoint folder and models/upscalers/RealESRGAN_x4plus.pth (wrapped in
    ``params_ema`` like the published file); reused when already there."""
    from pipelines.formats.esrgan import RRDBNet

    upscalers = root / "models" / "upscalers"
    upscalers.mkdir(parents=True, exist_ok=True)
    if quick:
        from pipelines.demo import save_sd_pipeline

        checkpoint = root / "sd-tiny"
        if not (checkpoint / "model_index.json").exists():
            save_sd_pipeline(checkpoint, seed=0, safe_serialization=True)
        net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4)
    else:
        from bench.sd15 import build_sd15

        checkpoint = build_sd15(root / "sd15-random")
        net = RRDBNet(num_feat=64, num_block=23, num_grow_ch=32)
    if not (upscalers / UPSCALER).exists():
        torch.manual_seed(0)
        torch.save({"params_ema": net.state_dict()}, upscalers / UPSCALER)
    return checkpoint


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.draft", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--draft-size", type=int, default=256, help="side of the draft; the direct image is 4x this")
    p.add_argument("--tile", type=int, default=192, help="upscaler tile side (0: no tiling)")
    p.add_argument("--quick", action="store_true", help="tiny models, 64² draft, 2 steps, 1 repeat: checks the plumbing only")
    p.add_argument("--model-dir", default=None, help="reuse a folder built by an earlier run")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.draft_size, args.steps, args.repeats = 64, 2, 1

    from pipelines.tasks import txt2img
    from pipelines.requests import Txt2Img
    from pipelines.store.settings import EngineSettings
    from pipelines.store import ModelStore
    from pipelines.requests import Upscale
    from pipelines.tasks.upscale import upscale

    # 1. Models in their real formats, loaded through the store (loading is not timed).
    root = Path(args.model_dir or tempfile.mkdtemp(prefix="danqing-draft-"))
    checkpoint = build_models(root, args.quick)
    store = ModelStore(EngineSettings(model=str(checkpoint), models_dir=root / "models", device=args.device,
                                      dtype=args.dtype, allow_download=False))
    store.base()
    device = store.plan.device
    big = args.draft_size * 4
    up_params = Upscale(UPSCALER, scale=4, tile=args.tile)

    def generate(side: int, steps: int):
        params = Txt2Img.from_fields(prompt=PROMPT, width=side, height=side, num_inference_steps=steps, seed=1234)
        return txt2img.run(store, params).images[0]

    def draft(steps: int) -> dict:
        sync(device)
        started = time.perf_counter()
        small = generate(args.draft_size, steps)
        sync(device)
        generated = time.perf_counter()
        image = upscale(store, small, up_params)
        sync(device)
        assert image.size == (big, big)
        return {"total": time.perf_counter() - started, "generate": generated - started, "upscale": time.perf_counter() - generated}

    def direct(steps: int) -> dict:
        sync(device)
        started = time.perf_counter()
        image = generate(big, steps)
        sync(device)
        assert image.size == (big, big)
        return {"total": time.perf_counter() - started}

    # 2. Warm up both paths once (kernel selection, the upscaler load) with one step.
    draft(1)
    direct(1)

    # 3. Interleaved timing: A B A B ...
    runs: dict[str, list[dict]] = {"draft": [], "direct": []}
    peaks: dict[str, int] = {"draft": 0, "direct": 0}
    for _ in range(args.repeats):
        for name, fn in (("draft", draft), ("direct", direct)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            runs[name].append(fn(args.steps))
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))

    # 4. Report medians and the ratio.
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus" + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
        "device": str(device), "dtype": str(store.plan.dtype).replace("torch.", ""), "torch": torch.__version__,
        "quick": args.quick, "steps": args.steps, "repeats": args.repeats, "draft_size": args.draft_size,
        "size": big, "tile": args.tile, "threads": torch.get_num_threads(),
        "draft": {
            "seconds": median("draft", "total"), "generate_seconds": median("draft", "generate"),
            "upscale_seconds": median("draft", "upscale"), "peak_cuda_bytes": peaks["draft"] or None,
            "runs": runs["draft"],
        },
        "direct": {"seconds": median("direct", "total"), "peak_cuda_bytes": peaks["direct"] or None, "runs": runs["direct"]},
    }
    result["ratio_direct_over_draft"] = result["direct"]["seconds"] / result["draft"]["seconds"]
    print(f"\n{big}x{big}, {args.steps} steps, {device}/{result['dtype']}, median of {args.repeats}" + (" (QUICK: tiny models)" if args.quick else ""))
    print(f"{'path':36} {'seconds':>9} {'peak MiB':>9}")
    for label, row in (
        (f"A draft {args.draft_size}² + x4 ESRGAN (tile {args.tile})", result["draft"]),
        (f"B direct {big}²", result["direct"]),
    ):
        peak = f"{row['peak_cuda_bytes'] / 2**20:9.0f}" if row["peak_cuda_bytes"] else f"{'-':>9}"
        print(f"{label:36} {row['seconds']:9.2f} {peak}")
    print(f"  of A: generate {result['draft']['generate_seconds']:.2f}s, upscale {result['draft']['upscale_seconds']:.2f}s")
    print(f"ratio B/A: {result['ratio_direct_over_draft']:.2f}  (above 1: the draft is faster)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
