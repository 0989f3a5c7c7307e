"""Danqing versus plain diffusers, side by side in one run.

    python -m bench --quick                 # a few minutes on a 2-core CPU
    python -m bench --size 512 --steps 20   # the real thing (GPU: add --dtype fp16)
    python -m bench --size 256 --variants danqing,danqing-lcm-4,danqing-lcm-8,danqing-tcd-4,diffusers-lcm-4
                                            # 极速: 20 steps against few-step LoRAs
    python -m bench --family sdxl --size 512 --steps 4 --repeats 3
                                            # the SDXL row: full-size SDXL against StableDiffusionXLPipeline
    python -m bench --family sdxl --size 1024 --steps 30 --dtype fp16
                                            # the same on a GPU (1024², fp16)
    python -m bench --family zimage --size 512 --steps 4 --repeats 3
                                            # the Z-Image row: full width, 4 main blocks, against ZImagePipeline

Builds the full-size SD 1.5 architecture with random weights (bench/sd15.py) in a temporary
folder, loads it (1) with plain ``StableDiffusionPipeline.from_pretrained`` and (2) through
Danqing's store and text-to-image path, and times them interleaved (A B A B ...), reporting
medians: seconds per U-Net step, end-to-end seconds, peak memory, and the largest pixel
difference between the outputs for the same seed.

``--family sdxl``: the full-size SDXL architecture (bench/sdxl.py) instead, plain diffusers'
``StableDiffusionXLPipeline`` against Danqing, both with SDXL's Euler. Two fp32 SDXLs do not fit
24 GiB beside each other, so on a CPU each turn loads its variant and frees it after (loading
is not timed; the turns still alternate A B A B).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

PROMPT = "竹林里的大熊猫，国风，水墨画"


class PeakMemory:
    """Working memory of a block: the peak resident memory above what the process held when
    the block began (CPU, sampled every 5 ms; every variant's weights stay loaded, so the
    process total says nothing per variant), or peak allocated bytes (CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self.start = self.peak = self._rss()

            def sample():
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, self._rss())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss()) - self.start


class StepClock:
    """Timestamps of each denoising step, from ``callback_on_step_end``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []

    def on_step_end(self, pipe, step, timestep, kwargs: dict) -> dict:
        """A diffusers ``callback_on_step_end`` that ticks the clock."""
        self.tick()
        return kwargs

    def tick(self, *_args) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def per_step(self) -> float:
        gaps = np.diff(self.times)
        return float(np.median(gaps)) if len(gaps) else float("nan")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Quality proxy of the approximate variants: PSNR against the exact image (inf = equal)."""
    mse = float(np.mean((a.astype(float) - b.astype(float)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


FEWSTEP_LORA = "fewstep-rank64.safetensors"


def fewstep_lora(folder: Path) -> Path:
    """A rank-64 LoRA over the whole U-Net in LCM-LoRA's layout (bench/sd15.py's model, random
    weights, written once): what a few-step LoRA costs per step, unfused, as users run it."""
    from pipelines.demo.lora import FEWSTEP_TARGETS

    path = folder.parent / "models" / "lora" / FEWSTEP_LORA
    if path.exists():
        return path
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, module in unet.named_modules():
        if not (name.endswith(FEWSTEP_TARGETS) and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))):
            continue
        conv = isinstance(module, torch.nn.Conv2d)
        inner = (module.in_channels, *module.kernel_size) if conv else (module.in_features,)
        outer = (module.out_channels, 64, 1, 1) if conv else (module.out_features, 64)
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = torch.randn((64, *inner), generator=g) * 0.01
        state[f"{key}.lora_up.weight"] = torch.randn(outer, generator=g) * 0.01
        state[f"{key}.alpha"] = torch.tensor(64.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return path


# Few-step variants: the settings each method's authors publish (pipelines/formats/configs/fewstep.json).
FEWSTEP_JOBS = {
    "lcm-4": {"sampler": "LCM", "num_inference_steps": 4, "guidance_scale": 1.0},
    "lcm-8": {"sampler": "LCM", "num_inference_steps": 8, "guidance_scale": 1.0},
    "tcd-4": {"sampler": "TCD", "num_inference_steps": 4, "guidance_scale": 0.0, "eta": 0.3},
}


def make_baseline(folder: Path, device: torch.device, dtype: torch.dtype, naive: bool = False,
                  job: dict | None = None):
    """Plain diffusers: PNDM at ``--steps`` with CFG 7.5, or a few-step ``job`` (FEWSTEP_JOBS)
    done the plain way: its scheduler and ``load_lora_weights``."""
    from diffusers import LCMScheduler, StableDiffusionPipeline, TCDScheduler

    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    if naive:
        from diffusers.models.attention_processor import AttnProcessor

        pipe.unet.set_attn_processor(AttnProcessor())
        pipe.vae.set_attn_processor(AttnProcessor())
    if job is not None:
        pipe.scheduler = (LCMScheduler if job["sampler"] == "LCM" else TCDScheduler).from_config(pipe.scheduler.config)
        pipe.load_lora_weights(str(fewstep_lora(folder)))
    pipe.set_progress_bar_config(disable=True)

    def run(seed: int, args) -> tuple[np.ndarray, StepClock]:
        clock = StepClock(device)
        settings = job or {"num_inference_steps": args.steps, "guidance_scale": 7.5}
        image = pipe(
            PROMPT, width=args.size, height=args.size, num_inference_steps=settings["num_inference_steps"],
            guidance_scale=settings["guidance_scale"], eta=settings.get("eta", 0.0),
            generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=clock.on_step_end,
        ).images[0]
        return np.asarray(image), clock

    return run


_STORES: dict = {}


def make_danqing(folder: Path, device: str, dtype: str, deepcache: int = 0, job: dict | None = None, **fast):
    """Danqing's store and text-to-image path; ``job``: a few-step job (FEWSTEP_JOBS) with the
    few-step LoRA instead of the benchmark's PNDM at ``--steps``."""
    from pipelines.tasks import txt2img
    from pipelines.requests import Txt2Img
    from pipelines.store.settings import EngineSettings
    from pipelines.store import ModelStore

    if job is not None:
        job = {**job, "loras": [[fewstep_lora(folder).name, 1.0]]}
    # Variants with the same engine settings share one store (one U-Net in memory, as in the
    # app: the few-step LoRA is switched on for its jobs and off for the others).
    key = (str(folder), device, dtype, tuple(sorted(fast.items())))
    store = _STORES.get(key)
    if store is None:
        store = _STORES[key] = ModelStore(EngineSettings(model=str(folder), models_dir=folder.parent / "models",
                                                         device=device, dtype=dtype, **fast))
    store.base()

    def run(seed: int, args) -> tuple[np.ndarray, StepClock]:
        clock = StepClock(store.plan.device)
        settings = job or {"num_inference_steps": args.steps, "guidance_scale": 7.5, "sampler": "PNDM"}
        params = Txt2Img.from_fields(prompt=PROMPT, width=args.size, height=args.size, seed=seed, deepcache=deepcache,
                                     **settings)
        result = txt2img.run(store, params, on_step=lambda i, n: clock.tick())
        return np.asarray(result.images[0]), clock

    return run


def make_baseline_family(folder: Path, device: torch.device, dtype: torch.dtype, cls: str, prompt: str,
                         guidance: float):
    """Plain diffusers' pipeline ``cls`` (StableDiffusionXLPipeline, ZImagePipeline) on the
    folder, its own scheduler, the job's prompt and guidance."""
    import diffusers

    pipe = getattr(diffusers, cls).from_pretrained(folder, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)

    def run(seed: int, args) -> tuple[np.ndarray, StepClock]:
        clock = StepClock(device)
        image = pipe(prompt, width=args.size, height=args.size, num_inference_steps=args.steps, guidance_scale=guidance,
                     generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=clock.on_step_end).images[0]
        return np.asarray(image), clock

    return run


def make_danqing_family(folder: Path, device: str, dtype: str, prompt: str, guidance: float):
    """Danqing's store and 文生图 on the folder, the same job (Euler: SDXL's own scheduler, and
    the name Z-Image's flow-matching Euler goes by)."""
    from pipelines.requests import Txt2Img
    from pipelines.store import ModelStore
    from pipelines.store.settings import EngineSettings
    from pipelines.tasks import txt2img

    store = ModelStore(EngineSettings(model=str(folder), models_dir=folder.parent / "models", device=device,
                                      dtype=dtype))
    store.base()

    def run(seed: int, args) -> tuple[np.ndarray, StepClock]:
        clock = StepClock(store.plan.device)
        params = Txt2Img.from_fields(prompt=prompt, width=args.size, height=args.size, seed=seed,
                                     num_inference_steps=args.steps, guidance_scale=guidance, sampler="Euler")
        result = txt2img.run(store, params, on_step=lambda i, n: clock.tick())
        return np.asarray(result.images[0]), clock

    return run


# A poster with a quoted Chinese title: what Z-Image is picked for.
PROMPT_ZIMAGE = "海报，标题“丹青”，水墨山水，留白"
# SDXL: CFG 7.5; Z-Image-Turbo: guidance 0 (no CFG).
VARIANTS_XL = {
    "diffusers": lambda f, a, d, t: make_baseline_family(f, d, t, "StableDiffusionXLPipeline", PROMPT, 7.5),
    "danqing": lambda f, a, d, t: make_danqing_family(f, a.device, a.dtype, PROMPT, 7.5),
}
VARIANTS_ZIMAGE = {
    "diffusers": lambda f, a, d, t: make_baseline_family(f, d, t, "ZImagePipeline", PROMPT_ZIMAGE, 0.0),
    "danqing": lambda f, a, d, t: make_danqing_family(f, a.device, a.dtype, PROMPT_ZIMAGE, 0.0),
}


VARIANTS = {
    "diffusers": lambda f, a, d, t: make_baseline(f, d, t, naive=False),
    "diffusers-naive-attn": lambda f, a, d, t: make_baseline(f, d, t, naive=True),
    "danqing": lambda f, a, d, t: make_danqing(f, a.device, a.dtype),
    "danqing-channels-last": lambda f, a, d, t: make_danqing(f, a.device, a.dtype, channels_last=True),
    "danqing-fuse-qkv": lambda f, a, d, t: make_danqing(f, a.device, a.dtype, fuse_qkv=True),
    "danqing-fast": lambda f, a, d, t: make_danqing(f, a.device, a.dtype, channels_last=True, fuse_qkv=True),
    "danqing-deepcache-2": lambda f, a, d, t: make_danqing(f, a.device, a.dtype, deepcache=2),
    "danqing-deepcache-3": lambda f, a, d, t: make_danqing(f, a.device, a.dtype, deepcache=3),
    "danqing-compile": lambda f, a, d, t: make_danqing(f, a.device, a.dtype, channels_last=True, compile=True),
    **{f"danqing-{name}": (lambda f, a, d, t, job=job: make_danqing(f, a.device, a.dtype, job=job))
       for name, job in FEWSTEP_JOBS.items()},
    **{f"diffusers-{name}": (lambda f, a, d, t, job=job: make_baseline(f, d, t, job=job))
       for name, job in FEWSTEP_JOBS.items()},
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="256², 4 steps, 2 repeats: a few minutes on 2 CPU cores")
    p.add_argument("--variants", default="diffusers,danqing", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--model-dir", default=None, help="reuse a folder built by an earlier run")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--family", default="sd15", choices=["sd15", "sdxl", "zimage"],
                   help="the architecture benchmarked (zimage: full width, --zimage-layers main blocks)")
    p.add_argument("--zimage-layers", type=int, default=4, help="Z-Image main blocks (the real one has 30)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.repeats = 256, 4, 2

    from pipelines.store.devices import plan_device

    plan = plan_device(args.device, args.dtype)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]

    # 1. The model folder (full-size SD 1.5 or SDXL architecture, random weights).
    from bench.sd15 import build_sd15
    from bench.sdxl import build_sdxl

    root = Path(args.model_dir or tempfile.mkdtemp(prefix="danqing-bench-"))
    xl = args.family == "sdxl"
    if args.family == "zimage":
        from bench.zimage import build_zimage_full

        folder = build_zimage_full(root / f"zimage-random-{args.zimage_layers}", layers=args.zimage_layers)
        table = VARIANTS_ZIMAGE
    else:
        folder = build_sdxl(root / "sdxl-random") if xl else build_sd15(root / "sd15-random")
        table = VARIANTS_XL if xl else VARIANTS
    reload = args.family != "sd15" and plan.device.type == "cpu"  # two fp32 SDXLs do not fit beside each other

    # 2. Load every variant once (loading is not what is timed), warm each up once; or (reload)
    #    load each for its turn.
    runners = {}
    if not reload:
        runners = {n: table[n](folder, args, plan.device, plan.dtype) for n in names}
        for n in names:
            runners[n](0, args)

    # 3. Interleaved timing: A B C, B C A, C A B ... (rotating, so no variant always runs first).
    rows = {n: {"e2e": [], "step": [], "peak": []} for n in names}
    images = {}
    for r in range(args.repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            if reload:  # loading is not timed: load, then time the job alone
                runner = table[n](folder, args, plan.device, plan.dtype)
            else:
                runner = runners[n]
            with PeakMemory(plan.device) as mem:
                sync(plan.device)
                started = time.perf_counter()
                image, clock = runner(1234, args)
                sync(plan.device)
                elapsed = time.perf_counter() - started
            if reload:
                import gc

                del runner
                gc.collect()
            rows[n]["e2e"].append(elapsed)
            rows[n]["step"].append(clock.per_step())
            rows[n]["peak"].append(mem.peak)
            images[n] = image

    # 4. Report.
    base = "diffusers" if "diffusers" in names else names[0]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus" + (f", {torch.cuda.get_device_name()}" if plan.device.type == "cuda" else ""),
        "device": str(plan.device), "dtype": str(plan.dtype).replace("torch.", ""),
        "size": args.size, "steps": args.steps, "repeats": args.repeats, "torch": torch.__version__,
        "family": args.family,
        "variants": {},
    }
    print(f"\n{args.size}x{args.size}, {args.steps} steps, {'no CFG' if args.family == 'zimage' else 'CFG on'}, {plan.device}/{result['dtype']}, median of {args.repeats}")
    print(f"{'variant':26} {'s/step':>8} {'e2e s':>8} {'work MiB':>9} {'speedup':>8} {'max|diff|':>9} {'PSNR dB':>8}")
    for n in names:
        e2e = statistics.median(rows[n]["e2e"])
        row = {
            "seconds_per_step": statistics.median(rows[n]["step"]),
            "seconds_end_to_end": e2e,
            "peak_bytes": max(rows[n]["peak"]),
            "speedup": statistics.median(rows[base]["e2e"]) / e2e,
            "max_abs_diff": int(np.abs(images[n].astype(int) - images[base].astype(int)).max()),
            "psnr_db": psnr(images[n], images[base]),
            "runs_e2e": rows[n]["e2e"],
        }
        result["variants"][n] = row
        print(f"{n:26} {row['seconds_per_step']:8.3f} {e2e:8.2f} {row['peak_bytes'] / 2**20:9.0f} {row['speedup']:8.3f} {row['max_abs_diff']:9d} {row['psnr_db']:8.1f}")
    if "danqing" in result["variants"]:
        result["speedup"] = result["variants"]["danqing"]["speedup"]
        result["max_abs_diff"] = result["variants"]["danqing"]["max_abs_diff"]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
