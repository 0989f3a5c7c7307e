"""What a decode costs: live-preview decoders against the full VAE, and VAE tiling at large sizes.

    python -m bench.decoders                        # 512² previews, 1024² tiling, 3 repeats
    python -m bench.decoders --quick                # 256² / 512², 1 repeat: plumbing check

(1) Preview: one image's latents decoded by the full SD VAE, by a TAESD-sized tiny decoder
(diffusers ``AutoencoderTiny`` with its default, published architecture) and by the linear
approximation (pipelines/preview.py), compared with one U-Net step (CFG: batch 2) at the same
size, so "a preview costs N steps" can be read directly. (2) Tiling: the full VAE decoding a
large image whole and with diffusers' tiled decode: seconds and peak working memory.

Random weights (bench/sd15.py sizes) cost the compute of real ones. Interleaved, medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from bench.__main__ import PeakMemory, sync


def timed(fn, device) -> tuple[float, int]:
    with PeakMemory(device) as mem:
        sync(device)
        started = time.perf_counter()
        with torch.no_grad():
            fn()
        sync(device)
        seconds = time.perf_counter() - started
    return seconds, mem.peak


def interleave(variants: dict, repeats: int, device) -> dict:
    for fn in variants.values():  # warm-up
        timed(fn, device)
    runs = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            runs[name].append(timed(variants[name], device))
    return {
        name: {"seconds": statistics.median(s for s, _ in rows), "peak_bytes": max(p for _, p in rows),
               "runs": [s for s, _ in rows]}
        for name, rows in runs.items()
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.decoders", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--size", type=int, default=512, help="preview comparison size")
    p.add_argument("--tile-size", type=int, default=1024, help="tiling comparison size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.tile_size, args.repeats = 256, 512, 1

    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel

    from bench.sd15 import SD15_UNET, SD15_VAE
    from pipelines.store.devices import plan_device
    from pipelines.tasks.preview import approx_decode

    plan = plan_device(args.device, args.dtype)
    device, dtype = plan.device, plan.dtype
    torch.manual_seed(0)
    vae = AutoencoderKL(**SD15_VAE).to(device, dtype).eval()
    tiny = AutoencoderTiny().to(device, dtype).eval()
    unet = UNet2DConditionModel(**SD15_UNET).to(device, dtype).eval()

    # 1. Preview decoders versus one U-Net step at --size.
    side = args.size // 8
    latents = torch.randn(1, 4, side, side, device=device, dtype=dtype)
    cfg_latents = torch.cat([latents, latents])
    text = torch.randn(2, 32, 768, device=device, dtype=dtype)
    t = torch.tensor([500], device=device)
    preview = interleave({
        "unet_step_cfg": lambda: unet(cfg_latents, t, encoder_hidden_states=text),
        "full_vae": lambda: vae.decode(latents / vae.config.scaling_factor),
        "tiny_decoder": lambda: tiny.decode(latents),
        "approx": lambda: approx_decode(latents),
    }, args.repeats, device)
    unet = None  # free the U-Net before the large decodes
    step = preview["unet_step_cfg"]["seconds"]
    for row in preview.values():
        row["unet_steps"] = row["seconds"] / step

    # 2. VAE tiling at --tile-size (diffusers' tiled decode; tiles of 512² with overlap).
    side = args.tile_size // 8
    big = torch.randn(1, 4, side, side, device=device, dtype=dtype) / vae.config.scaling_factor

    def whole():
        vae.disable_tiling()
        vae.decode(big)

    def tiled():
        vae.enable_tiling()
        vae.decode(big)

    tiling = interleave({"whole": whole, "tiled": tiled}, args.repeats, device)
    vae.disable_tiling()

    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {plan.device}",
        "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__, "repeats": args.repeats,
        "preview_size": args.size, "preview": preview, "tiling_size": args.tile_size, "tiling": tiling,
    }
    print(f"\nPreview decode of one {args.size}² image ({plan.device}/{result['dtype']}, median of {args.repeats})")
    print(f"{'decoder':16} {'seconds':>9} {'U-Net steps':>12} {'work MiB':>9}")
    for name, row in preview.items():
        print(f"{name:16} {row['seconds']:9.4f} {row['unet_steps']:12.3f} {row['peak_bytes'] / 2**20:9.0f}")
    print(f"\nFull VAE decode of one {args.tile_size}² image")
    for name, row in tiling.items():
        print(f"{name:16} {row['seconds']:9.2f} s {row['peak_bytes'] / 2**20:9.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
