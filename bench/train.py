"""LoRA training speed, side by side in one run (issue 17).

    python -m bench.train --size 256 --steps 4 --repeats 2 --json train.json     # CPU-sized
    python -m bench.train --size 512 --steps 20 --dtype fp16                      # on a GPU
    python -m bench.train --quick                                                 # plumbing check

Full-size SD 1.5 architecture with random weights (bench/sd15.py), rank 16 on the same target
modules, the same AdamW, batch 1. Interleaved rounds (A B C, B C A, ...), medians of the seconds
per training step (the first step of each run, which warms up, is left out):

A. Danqing: ``tasks.train.train`` on the store's resident U-Net (what the 训练 tab runs);
B. a plain peft + diffusers loop written here as the baseline: ``UNet2DConditionModel`` from the
   same folder, ``add_adapter(LoraConfig)``, noise, MSE, AdamW;
C. Danqing with gradient checkpointing.

Peak memory: on a GPU ``max_memory_allocated`` per variant; on a CPU each variant once more in
a child process of its own, its peak resident set (``VmHWM``; ``--memory-only`` runs just that).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def _pictures(folder: Path, size: int) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(4):
        image = Image.new("RGB", (size, size), (30 + 40 * i, 60, 200))
        image.paste((220, 40, 40), (size // 8 * (i + 1), size // 4, size // 2 + size // 8 * i, 3 * size // 4))
        image.save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def _danqing(store, pictures, size, steps, rank, checkpointing, work: Path) -> list[float]:
    from pipelines.requests import TrainLora
    from pipelines.tasks import train as training

    stamps: list[float] = []
    name = f"bench{time.monotonic_ns()}"
    req = TrainLora.build(name, "benchsq", pictures, steps=steps, rank=rank, alpha=rank, resolution=size,
                          gradient_checkpointing=checkpointing, preview=False, learning_rate=1e-4)
    lora_dir = work / "loras"
    lora_dir.mkdir(exist_ok=True)
    training.train(store, req, work / name, lora_dir, on_step=lambda n, total, loss: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def _plain(folder: Path, pictures, size, steps, rank, device, dtype) -> list[float]:
    """The baseline: peft + diffusers as their documentation trains a LoRA, nothing else."""
    import numpy as np
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from PIL import Image
    from transformers import AutoTokenizer, CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype).to(device)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype).to(device)
    text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    for module in (unet, vae, text):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    with torch.no_grad():
        pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((size, size)),
                                                          dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
                              for p in pictures]).to(device, dtype)
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        ids = tokenizer(["benchsq"] * len(pictures), padding="max_length", max_length=min(tokenizer.model_max_length, 77),
                        truncation=True, return_tensors="pt").input_ids.to(device)
        cond = text(ids)[0]
    unet.train()
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else _null()
    times = []
    for step in range(steps):
        started = time.perf_counter()
        i = torch.randint(len(latents), (1,))
        x0 = latents[i].float()
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), device=device)
        with autocast:
            pred = unet(scheduler.add_noise(x0, noise, t).to(dtype), t, encoder_hidden_states=cond[i]).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - started)
    del unet, vae, text, optimizer
    return times[1:]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _peak_rss_mib() -> float | None:
    """This process's own peak resident set (VmHWM; ru_maxrss would include the parent's at fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="training steps per run (the first is not timed)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--quick", action="store_true", help="the tiny demo model: checks the plumbing only")
    p.add_argument("--model-dir", default=None)
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # a child process measuring one variant's memory
    p.add_argument("--memory-only", action="store_true", help="only the peak memory of each variant (CPU)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.repeats = 64, 3, 1

    from pipelines.store import ModelStore
    from pipelines.store.quiet import quiet_known_noise
    from pipelines.store.settings import EngineSettings

    quiet_known_noise()
    root = Path(args.model_dir or tempfile.mkdtemp(prefix="danqing-train-"))
    from bench.sd15 import model_folder

    folder = model_folder(root, args.quick)
    pictures = _pictures(root / "pictures", args.size)
    from pipelines.store.devices import plan_device

    plan = plan_device(args.device, args.dtype)
    device, dtype = plan.device, plan.dtype
    stores: list = []  # the store is loaded once, and only by the variants that use it

    def store():
        if not stores:
            stores.append(ModelStore(EngineSettings(model=str(folder), models_dir=root / "models", device=args.device,
                                                    dtype=args.dtype, allow_download=False)))
            stores[0].base()
        return stores[0]

    variants = {
        "danqing": lambda: _danqing(store(), pictures, args.size, args.steps, args.rank, False, root),
        "plain_peft_diffusers": lambda: _plain(folder, pictures, args.size, args.steps, args.rank, device, dtype),
        "danqing_gradient_checkpointing": lambda: _danqing(store(), pictures, args.size, args.steps, args.rank, True, root),
    }
    if args.only:  # one variant, for its own peak memory
        variants[args.only]()
        print(json.dumps({"peak_rss_mib": _peak_rss_mib()}))
        return {}
    names = list(variants)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float] = {}
    for r in range(0 if args.memory_only else args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds[name] += variants[name]()
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device) / 2**20)
    if device.type != "cuda":
        for name in names:
            child = subprocess.run([sys.executable, "-m", "bench.train", "--only", name, "--model-dir", str(root),
                                    "--size", str(args.size), "--steps", "2", "--rank", str(args.rank),
                                    *(["--quick"] if args.quick else [])],
                                   capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            lines = [l for l in child.stdout.splitlines() if l.startswith("{")]
            peaks[name] = json.loads(lines[-1])["peak_rss_mib"] if lines else None
    if args.memory_only:
        print(json.dumps({"size": args.size, "rank": args.rank, "peak_memory_mib": peaks,
                          "peak_memory_kind": "child process VmHWM"}, indent=2))
        return peaks
    medians = {n: statistics.median(v) for n, v in seconds.items()}
    result = {
        "machine": {"device": str(device), "dtype": str(dtype), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "os": platform.platform(),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "size": args.size, "rank": args.rank, "steps_per_run": args.steps, "repeats": args.repeats,
        "seconds_per_step_median": {n: round(v, 3) for n, v in medians.items()},
        "seconds_per_step_all": {n: [round(x, 3) for x in v] for n, v in seconds.items()},
        "speed_ratio_vs_plain": round(medians["plain_peft_diffusers"] / medians["danqing"], 3),
        "peak_memory_mib": {n: (round(v) if v else None) for n, v in peaks.items()},
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "child process VmHWM",
        "minutes_for_1000_steps": {n: round(v * 1000 / 60, 1) for n, v in medians.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
