"""历史 search with many saved images, side by side in one run (issue 18).

    python -m bench.history --images 10000 --json history.json
    python -m bench.history --quick                               # 300 images, plumbing only

``--images`` small PNGs, each with A1111 parameters (Chinese prompts from a word list, seeds,
two models, two samplers), are written into an outputs folder of three users. Then:

A. Danqing: ``pipelines.history`` (SQLite) — the median time of a page of 48 for a Chinese
   substring, for a seed, for a filter with a deep page, and the count, over ``--repeats``
   rounds interleaved; the time to rebuild the index from the files (index deleted) and to sync
   an intact one at start;
B. the plain way (what an image-browser extension does): open every PNG, read its parameters,
   keep those whose prompt holds the words — timed once per round, interleaved with A.

Also the process's peak memory (VmHWM) after the searches, which must not grow with the history:
pages are LIMIT/OFFSET queries.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

WORDS = ["竹林", "大熊猫", "水墨画", "橘猫", "窗台", "山水", "远山", "小船", "赛博朋克", "城市", "夜景", "霓虹灯",
         "青花瓷", "纹样", "古风", "少女", "工笔画", "咖啡杯", "极简", "海报", "产品摄影", "白底", "插画", "雪山"]


def make_outputs(root: Path, count: int, seed: int = 0) -> None:
    from PIL import Image

    from pipelines.formats.pnginfo import format_parameters
    from pipelines.outputs import OutputWriter

    rng = random.Random(seed)
    writer = OutputWriter(root)
    image = Image.new("RGB", (64, 64), (120, 80, 60))
    for i in range(count):
        prompt = "，".join(rng.sample(WORDS, 4))
        fields = {"Steps": 20, "Sampler": rng.choice(["Euler a", "DPM++ 2M Karras"]), "CFG scale": 7,
                  "Seed": 1_000_000 + i, "Size": "512x512", "Model": rng.choice(["pai-artist-zh", "taiyi-v1"])}
        writer.save(image, format_parameters(prompt, "模糊", fields), 1_000_000 + i, user=rng.choice(["甲", "乙", "丙"]))
    writer.history.close()


def plain_scan(root: Path, words: list[str]) -> int:
    """Every PNG opened and its parameters read, those holding every word kept."""
    from PIL import Image

    from pipelines.formats.pnginfo import parse_parameters, read_parameters_of

    found = 0
    for path in root.rglob("*.png"):
        with Image.open(path) as image:
            prompt = parse_parameters(read_parameters_of(image.info) or "")["prompt"]
        found += all(w in prompt for w in words)
    return found


def peak_mb() -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((x for x in text.splitlines() if x.startswith("VmHWM:")), None)
    return int(line.split()[1]) / 1024 if line else None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    count = 300 if args.quick else args.images

    from pipelines.history import History

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "outputs"
        started = time.perf_counter()
        make_outputs(root, count)
        written = time.perf_counter() - started
        owners = ["甲"]  # one user's view (about a third of the images)
        queries = {
            "substring 熊猫": dict(text="熊猫"),
            "two words 熊猫 水墨": dict(text="熊猫 水墨"),
            "seed": dict(text=str(1_000_000 + count // 2)),
            "filter model, page 20": dict(model="taiyi-v1", offset=48 * 19),
        }
        times: dict[str, list[float]] = {k: [] for k in queries}
        times["plain scan 熊猫 水墨"] = []
        history = History(root)
        history.ensure_synced()
        for _ in range(args.repeats):
            for name, query in queries.items():
                t = time.perf_counter()
                page = history.search(owners, **query)
                times[name].append(time.perf_counter() - t)
                assert page.total >= 0
            t = time.perf_counter()
            plain_scan(root, ["熊猫", "水墨"])
            times["plain scan 熊猫 水墨"].append(time.perf_counter() - t)
        check = history.search(None, "熊猫 水墨", limit=200).total
        plain = plain_scan(root, ["熊猫", "水墨"])
        history.close()
        # Start-up: an intact index synced, then one rebuilt from the files.
        t = time.perf_counter()
        History(root).sync()
        sync_intact = time.perf_counter() - t
        for suffix in ("", "-wal", "-shm"):
            Path(f"{root / 'history.sqlite3'}{suffix}").unlink(missing_ok=True)
        again = History(root)
        t = time.perf_counter()
        counts = again.sync()
        rebuild = time.perf_counter() - t
        again.close()
    medians = {k: round(statistics.median(v) * 1000, 2) for k, v in times.items()}
    result = {
        "bench": "history", "images": count, "repeats": args.repeats, "python": platform.python_version(),
        "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
        "median_ms": medians,
        "plain_scan_vs_substring": round(medians["plain scan 熊猫 水墨"] / medians["two words 熊猫 水墨"], 1),
        "same_answer": check == plain, "matches": check,
        "sync_intact_s": round(sync_intact, 3), "rebuild_from_files_s": round(rebuild, 2),
        "rebuilt_rows": counts["added"], "writing_images_s": round(written, 1), "peak_memory_mb": peak_mb(),
    }
    print(json.dumps(result, ensure_ascii=False, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
