"""What LoRA switching costs, measured in one run.

    python -m bench.lora                             # the demo bundle's tiny model, 64x64
    python -m bench.lora --full --size 256 --rounds 1  # full-size SD 1.5 architecture (slow on CPU)

Random rank-16 LoRAs (every attention, feed-forward and text-encoder linear layer, peft
format) are written next to the base in a temporary models folder and switched through the
store with ``pipelines.tasks.lora.apply_loras``, exactly as a job does. Reported, as medians:
the first load of a file, a switch between loaded adapters, a switch back to none, a repeated
identical request (the no-op), and seconds per U-Net step (batch 2, as with CFG) with none,
1 and 3 LoRAs active, timed interleaved (none, 1, 3, none, 1, 3, ...) with their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

LORA_COUNT = 4


def write_loras(pipe, folder: Path, rank: int, count: int, seed: int = 0) -> list[str]:
    """``count`` random peft-format LoRAs for ``pipe``'s U-Net and text encoder."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    targets = [
        (prefix, name, module)
        for prefix, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ("attn" in name or ".ff." in name or ".layers." in name)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        state = {}
        for prefix, name, module in targets:
            scale = 1.0 / module.in_features**0.5
            state[f"{prefix}.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * scale
            state[f"{prefix}.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.01
        names.append(f"bench-{i}.safetensors")
        save_file(state, folder / names[-1])
    return names


def timed(fn, repeat: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def prepare(args, work: Path) -> tuple[Path, str]:
    """A models folder with one base in checkpoints/ (demo copy or full-size SD 1.5)."""
    models = work / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "lora").mkdir()
    if args.full:
        from bench.sd15 import build_sd15

        print("building the full-size SD 1.5 architecture (random weights)...", flush=True)
        build_sd15(models / "checkpoints" / "sd15-random")
        return models, "sd15-random"
    from pipelines.demo import DEMO_MODEL, ensure_demo_bundle

    bundle = ensure_demo_bundle()
    shutil.copytree(bundle / "checkpoints" / DEMO_MODEL, models / "checkpoints" / DEMO_MODEL)
    return models, DEMO_MODEL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="full-size SD 1.5 U-Net instead of the demo model")
    parser.add_argument("--size", type=int, default=None, help="image side (default 64 demo, 512 full)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds of U-Net steps")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    size = args.size or (512 if args.full else 64)
    rounds = args.rounds or (3 if args.full else 15)

    from pipelines.tasks import lora
    from pipelines.store.settings import EngineSettings
    from pipelines.store import ModelStore

    with tempfile.TemporaryDirectory(prefix="danqing-bench-lora-") as tmp:
        work = Path(tmp)
        # 1. A store over a temporary models folder, and random LoRAs for its base.
        models, model = prepare(args, work)
        store = ModelStore(EngineSettings(model=model, models_dir=models, outputs_dir=work / "out", device="cpu", demo=True, allow_download=False))
        started = time.perf_counter()
        base = store.base()
        load_base = time.perf_counter() - started
        names = write_loras(base, models / "lora", args.rank, LORA_COUNT)
        state = store.adapters

        # 2. Switching costs.
        first_loads = [timed(lambda n=n: lora.apply_loras(store, [(n, 1.0)])) for n in names]
        a, b = names[0], names[1]
        switch = timed(lambda: (lora.apply_loras(store, [(a, 1.0)]), lora.apply_loras(store, [(b, 0.8)])), 10) / 2
        to_none = []
        for _ in range(10):
            lora.apply_loras(store, [(a, 1.0)])
            to_none.append(timed(lambda: lora.apply_loras(store, [])))
        lora.apply_loras(store, [(a, 1.0)])
        noop = timed(lambda: lora.apply_loras(store, [(a, 1.0)]), 200)
        loads_during_switching = state.loads - LORA_COUNT

        # 3. U-Net step time with none / 1 / 3 LoRAs active, interleaved.
        side = size // 8
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(2, 4, side, side, generator=g)
        tokens = base.text_encoder.config.max_position_embeddings
        context = torch.randn(2, tokens, base.unet.config.cross_attention_dim, generator=g)
        configs = {"none": [], "1 LoRA": [(a, 1.0)], "3 LoRAs": [(n, 0.7) for n in names[:3]]}
        samples: dict[str, list[float]] = {k: [] for k in configs}

        def step() -> None:
            with torch.no_grad():
                base.unet(latents, 500, context)

        step()  # warm-up
        for _ in range(rounds):
            for label, request in configs.items():
                lora.apply_loras(store, request)
                samples[label].append(timed(step))
        medians = {k: statistics.median(v) for k, v in samples.items()}

    report = {
        "model": "SD 1.5 architecture, random weights" if args.full else "demo bundle",
        "size": size,
        "rank": args.rank,
        "rounds": rounds,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_base_s": round(load_base, 2),
        "first_load_ms": round(statistics.median(first_loads) * 1000, 1),
        "switch_between_loaded_ms": round(switch * 1000, 2),
        "switch_to_none_ms": round(statistics.median(to_none) * 1000, 2),
        "repeat_request_noop_ms": round(noop * 1000, 4),
        "reloads_while_switching": loads_during_switching,
        "unet_step_s": {k: round(v, 4) for k, v in medians.items()},
        "unet_step_ratio_vs_none": {k: round(v / medians["none"], 3) for k, v in medians.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
