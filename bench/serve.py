"""Ray Serve replicas: jobs per minute with 1 and 2 replicas, and what the Ray hop adds.

    python -m bench.serve --replicas 1,2          # CPU: one thread per replica
    python -m bench.serve --replicas 1,2,4 --gpu  # one GPU per replica

On the demo bundle's model at a size and step count where one job takes about a second on
one thread (``--size``, ``--steps``). Each round deploys the replica counts in turn (A B A B)
and sends ``--jobs`` jobs at once from as many client threads, through the same RayEngine the
app uses; the figure is jobs per minute, median of the rounds. The hop: one job alone on one
replica against the same job run in this process with one thread, medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", default="1,2")
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    counts = [int(n) for n in args.replicas.split(",")]

    import torch

    from pipelines.demo import DEMO_MODEL, ensure_demo_bundle
    from pipelines.requests import Txt2Img
    from pipelines.serve import remote
    from pipelines.store import ModelStore
    from pipelines.store.settings import EngineSettings
    from pipelines.tasks import txt2img

    # 1. The model, and one job run here with one thread (the replicas' setting).
    models = ensure_demo_bundle(Path(os.environ.get("DANQING_CACHE") or tempfile.mkdtemp(prefix="danqing-serve-")))
    settings = EngineSettings(model=str(models / "checkpoints" / DEMO_MODEL), models_dir=models, demo=True,
                              device="cuda" if args.gpu else "cpu", preview="off")

    def request(seed: int) -> Txt2Img:
        return Txt2Img.from_fields(prompt="竹林里的大熊猫，水墨画", width=args.size, height=args.size,
                                   num_inference_steps=args.steps, seed=seed)

    torch.set_num_threads(1)
    store = ModelStore(settings)
    txt2img.run(store, request(0))
    local = []
    for i in range(3):
        started = time.perf_counter()
        txt2img.run(store, request(i))
        local.append(time.perf_counter() - started)

    # 2. Ray: each replica count deployed in turn, every job sent at once.
    remote.connect(num_cpus=None if args.gpu else max(counts))
    rates: dict[int, list[float]] = {n: [] for n in counts}
    hop: list[float] = []
    never = threading.Event()
    for _ in range(args.rounds):
        for n in counts:
            engine = remote.start(settings, remote.RayOptions(replicas=n, threads=1, gpus=args.gpu))
            threads = [threading.Thread(target=engine.run, args=("txt2img", request(k)),
                                        kwargs={"model": settings.model, "vae": "auto", "cancel": never})
                       for k in range(n)]
            for t in threads:  # warm each replica (its first job loads the model)
                t.start()
            for t in threads:
                t.join()
            if n == 1:
                for i in range(3):
                    started = time.perf_counter()
                    engine.run("txt2img", request(i), model=settings.model, vae="auto", cancel=never)
                    hop.append(time.perf_counter() - started)
            threads = [threading.Thread(target=engine.run, args=("txt2img", request(100 + k)),
                                        kwargs={"model": settings.model, "vae": "auto", "cancel": never})
                       for k in range(args.jobs)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rates[n].append(args.jobs / (time.perf_counter() - started) * 60)
            from ray import serve

            serve.delete(remote.APP_NAME)
    remote.stop()

    # 3. Report.
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cpus" + (", GPU" if args.gpu else ""),
        "size": args.size, "steps": args.steps, "jobs": args.jobs, "rounds": args.rounds,
        "local_job_seconds": statistics.median(local), "ray_job_seconds": statistics.median(hop) if hop else None,
        "jobs_per_minute": {n: statistics.median(r) for n, r in rates.items()},
        "runs": {n: r for n, r in rates.items()},
    }
    base = result["jobs_per_minute"][counts[0]]
    print(f"\none job here (1 thread): {result['local_job_seconds']:.3f} s; through Ray on one replica: "
          f"{result['ray_job_seconds']:.3f} s (the hop: {result['ray_job_seconds'] - result['local_job_seconds']:+.3f} s)")
    for n in counts:
        print(f"{n} replica(s): {result['jobs_per_minute'][n]:.1f} jobs/min ({result['jobs_per_minute'][n] / base:.2f}x), "
              f"runs {[round(r, 1) for r in rates[n]]}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
