"""Z-Image's memory modes: what each keeps on the GPU, measured.

    python -m bench.zimage_memory                         # CPU: bytes per mode, 4 full-width blocks
    python -m bench.zimage_memory --device cuda --layers 30 --size 1024 --steps 8
                                                          # GPU: peak allocated per mode, the real depth

For each mode (resident, park, fp8, and a Q8_0 GGUF transformer) a fresh process loads the
full-width Z-Image folder of ``bench/zimage.py`` through Danqing's store with ``--memory-mode``
set, runs one text-to-image job and reports: the bytes of the parts that live on the compute
device between jobs (denoiser, VAE, and the text encoder unless parked), the process's peak
resident memory (CPU) or ``torch.cuda.max_memory_allocated`` (GPU), and the job's seconds. On a
CPU "the compute device" is the same RAM, so the first column is what a GPU would hold; the
figures scale to the real 30-block model by the per-block bytes (printed beside them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("resident", "park", "fp8", "gguf")


def _one(args) -> dict:
    """Run in the child: load with one mode, one job, report."""
    import torch

    from pipelines.requests import Txt2Img
    from pipelines.store import EngineSettings, ModelStore
    from pipelines.store.cache import module_bytes
    from pipelines.tasks import txt2img

    folder = Path(args.folder)
    gguf = args.mode == "gguf"
    models = folder.parent / "models-gguf" if gguf else folder.parent / "models"
    model = "transformer-Q8_0.gguf" if gguf else str(folder)
    store = ModelStore(EngineSettings(model=model, models_dir=models, device=args.device, dtype=args.dtype,
                                      memory_mode="park" if gguf else args.mode))
    pipe, family = store.base(), store.family
    on_device = module_bytes(family.denoiser_of(pipe)) + module_bytes(pipe.vae)
    encoder = module_bytes(pipe.text_encoder)
    if not store.memory["parked"]:
        on_device += encoder
    if store.plan.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    txt2img.run(store, Txt2Img.from_fields(prompt="海报，标题“丹青”，水墨山水", width=args.size, height=args.size,
                                           num_inference_steps=args.steps, guidance_scale=0.0, sampler="Euler", seed=1))
    seconds = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() if store.plan.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": args.mode, "memory": store.memory, "device_bytes": on_device, "text_encoder_bytes": encoder,
            "denoiser_bytes": module_bytes(family.denoiser_of(pipe)), "peak_bytes": peak, "seconds": seconds}


def _gguf_models(folder: Path) -> None:
    """The folder's transformer as a Q8_0 GGUF with its Qwen3 and VAE as split files beside it."""
    target = folder.parent / "models-gguf"
    if (target / "diffusion_models" / "transformer-Q8_0.gguf").exists():
        return
    from diffusers import ZImagePipeline

    from pipelines.demo.zimage import write_split_files

    pipe = ZImagePipeline.from_pretrained(folder)
    write_split_files(pipe, target, None, "transformer-Q8_0.gguf", "qwen3.safetensors", "ae.safetensors")
    # The split files carry no tokenizer: a tokenizer-only folder where the store looks for Qwen's
    pipe.tokenizer.save_pretrained(target / "prompters" / "qwen-tokenizer")
    (target / "prompters" / "qwen-tokenizer" / "config.json").write_text("{}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.zimage_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--layers", type=int, default=4, help="main blocks (the real Z-Image has 30)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--model-dir", default=None, help="reuse a folder built by an earlier run")
    p.add_argument("--json", default=None)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode:  # the child
        print("RESULT " + json.dumps(_one(args)))
        return {}
    from bench.zimage import build_zimage_full

    root = Path(args.model_dir or tempfile.mkdtemp(prefix="danqing-zmem-"))
    folder = build_zimage_full(root / f"zimage-random-{args.layers}", layers=args.layers)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "gguf" in modes:
        _gguf_models(folder)
    rows = []
    for mode in modes:
        command = [sys.executable, "-m", "bench.zimage_memory", "--mode", mode, "--folder", str(folder),
                   "--device", args.device, "--dtype", args.dtype, "--size", str(args.size), "--steps", str(args.steps)]
        out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(out.stdout[-2000:], out.stderr[-4000:])
            raise SystemExit(f"mode {mode} failed")
        rows.append(json.loads(line[len("RESULT "):]))
    result = {"date": time.strftime("%Y-%m-%d"), "layers": args.layers, "size": args.size, "steps": args.steps,
              "device": args.device, "rows": rows}
    print(f"\nZ-Image full width, {args.layers} main blocks, {args.size}², {args.steps} steps, {args.device}/{args.dtype}")
    print(f"{'mode':10} {'on device GiB':>14} {'denoiser GiB':>13} {'peak GiB':>9} {'job s':>7}")
    for r in rows:
        print(f"{r['mode']:10} {r['device_bytes'] / 2**30:14.2f} {r['denoiser_bytes'] / 2**30:13.2f} "
              f"{r['peak_bytes'] / 2**30:9.2f} {r['seconds']:7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
