"""Loading an A1111 single-file checkpoint, side by side in one run (issue 16).

    python -m bench.single_file --repeats 3 --json single.json    # full-size SD 1.5, fp16 file
    python -m bench.single_file --quick                            # plumbing check, tiny model

The full-size SD 1.5 architecture with random weights (bench/sd15.py) is written as a
diffusers folder and as one fp16 ``.safetensors`` file in the original LDM key layout, then
loaded interleaved (A B C, B C A, ...), medians reported:

A. Danqing: ``formats.checkpoint.load_single_file`` — configs from the weights' shapes, nothing
   fetched (what ``models/checkpoints/x.safetensors`` goes through);
B. plain diffusers: ``StableDiffusionPipeline.from_single_file(path, config=<the diffusers
   folder>, local_files_only=True)`` — the library's own offline way, which needs that folder;
C. plain diffusers ``from_pretrained`` of the folder (the format Danqing loaded before).

Also: the largest weight difference between A and B (0 means the same model), and the time of
A1111's short hash of the file (computed once per file, cached by size and mtime).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.single_file", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="the tiny demo model: checks the plumbing only")
    p.add_argument("--model-dir", default=None, help="reuse a folder built by an earlier run")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from diffusers import StableDiffusionPipeline
    from transformers import AutoTokenizer

    from pipelines.demo.single_file import save_single_file
    from pipelines.formats.checkpoint import load_single_file
    from pipelines.formats.weights import file_hash, short_hash
    from pipelines.store.quiet import quiet_known_noise

    quiet_known_noise()
    # 1. The model as a diffusers folder and as one fp16 LDM file.
    root = Path(args.model_dir or tempfile.mkdtemp(prefix="danqing-single-"))
    from bench.sd15 import model_folder

    folder = model_folder(root, args.quick)
    single = root / "sd15-random-fp16.safetensors"
    if not single.exists():
        source = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        save_single_file(source, single, torch.float16)
        del source
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    dtype = torch.float32

    def danqing():
        return load_single_file(single, dtype, lambda n: tokenizer if n == len(tokenizer) else None)

    def diffusers_single():
        return StableDiffusionPipeline.from_single_file(str(single), config=str(folder), local_files_only=True,
                                                        torch_dtype=dtype, safety_checker=None,
                                                        requires_safety_checker=False)

    def diffusers_folder():
        return StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False)

    variants = {"danqing_single_file": danqing, "diffusers_from_single_file": diffusers_single,
                "diffusers_from_pretrained_folder": diffusers_folder}
    # 2. Same weights? (A against B, every U-Net, VAE and text-encoder tensor)
    a, b = danqing(), diffusers_single()
    worst = 0.0
    for part in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        sb = {k.removeprefix("text_model."): v for k, v in sb.items()}
        sa = {k.removeprefix("text_model."): v for k, v in sa.items()}
        common = [k for k in sa if k in sb]
        worst = max(worst, max(float((sa[k].float() - sb[k].float()).abs().max()) for k in common))
        if len(common) != len(sa):
            print(f"{part}: {len(sa) - len(common)} tensors only in Danqing's load")
    del a, b
    gc.collect()

    # 3. Interleaved timings.
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            started = time.perf_counter()
            pipe = variants[name]()
            times[name].append(time.perf_counter() - started)
            del pipe
            gc.collect()
    short_hash.cache_clear()
    started = time.perf_counter()
    digest = file_hash(single)
    hash_seconds = time.perf_counter() - started
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "os": platform.platform()},
        "file_bytes": single.stat().st_size,
        "max_weight_difference_vs_diffusers": worst,
        "seconds_median": {n: round(statistics.median(v), 2) for n, v in times.items()},
        "seconds_all": {n: [round(x, 2) for x in v] for n, v in times.items()},
        "short_hash": digest,
        "short_hash_seconds": round(hash_seconds, 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
