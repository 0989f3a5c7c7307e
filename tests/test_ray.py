"""More than one GPU (issue 20): ``python app.py --ray`` on a local Ray cluster with two CPU
replicas (one thread each) on the demo bundle. Jobs from several clients all complete, each
image saved once, and both replicas serve; the same request and seed give the same pixels as
without Ray; a replica killed mid-job loses no job silently (the job is sent again, Ray
restarts the replica).

Needs Ray Serve (``pip install -r requirements-ray.txt``; .ci/run installs it)."""

import base64
import io
import os
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="Ray Serve is not installed (pip install -r requirements-ray.txt)")

JOB = {"prompt": "竹林里的大熊猫，水墨画", "width": 64, "height": 64, "steps": 3, "seed": 11}


@pytest.fixture(scope="module")
def ray_app(demo_models, demo_cache, tmp_path_factory):
    from conftest import LaunchedApp

    work = tmp_path_factory.mktemp("ray")
    # Several clients from this one address: the per-client cap raised to let them all wait.
    app = LaunchedApp(["--demo", "--api", "--ray", "--replicas", "2", "--replica-threads", "1",
                       "--preview-every", "0", "--client-queue-limit", "8"], demo_cache, work / "outputs", timeout=300)
    yield app
    app.stop()


def post(app, path, body):
    from test_sdapi import call

    return call(app, path, body)


def pixels(body) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB"))


def info(body) -> dict:
    import json

    return json.loads(body["info"])


def test_two_replicas_serve_several_clients_and_each_image_is_saved_once(ray_app):
    results = {}

    def client(n: int) -> None:
        results[n] = post(ray_app, "/sdapi/v1/txt2img", {**JOB, "steps": 10, "seed": 100 + n})  # long enough to overlap

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(results) == list(range(6))
    assert [status for status, _ in results.values()] == [200] * 6, {n: r[1] for n, r in results.items() if r[0] != 200}
    replicas = {info(body)["engine"]["replica"] for _, body in results.values()}
    assert len(replicas) == 2, replicas  # both replicas took jobs
    saved = sorted(p.name for p in ray_app.outputs.rglob("*.png") if ".thumbs" not in p.parts)
    seeds = [int(name.split("-")[1].split(".")[0]) for name in saved]
    for n in range(6):  # each job's image once
        assert seeds.count(100 + n) == 1, saved


def test_the_same_request_gives_the_same_pixels_as_without_ray(ray_app, demo_models, tmp_path):
    import torch

    from conftest import make_studio
    from pipelines.requests import Txt2Img

    status, body = post(ray_app, "/sdapi/v1/txt2img", JOB)
    assert status == 200, body
    studio = make_studio(demo_models, tmp_path / "outputs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the replicas run (one thread each)
    try:
        paths, _ = studio.txt2img(Txt2Img.from_fields(prompt=JOB["prompt"], width=64, height=64,
                                                      num_inference_steps=3, seed=JOB["seed"]))
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(pixels(body), np.asarray(Image.open(paths[0]).convert("RGB")))


def test_stop_reaches_the_replica_within_a_step(ray_app):
    """停止 (here A1111's /interrupt) while a long job runs on a replica: the request ends
    interrupted within about a step, and the replica is free for the next job at once."""
    from test_sdapi import call

    result = {}
    thread = threading.Thread(target=lambda: result.update(
        answer=post(ray_app, "/sdapi/v1/txt2img", {**JOB, "width": 128, "height": 128, "steps": 150, "seed": 31})))
    thread.start()
    deadline = time.time() + 120
    step = None
    while time.time() < deadline:
        running = [r for r in call(ray_app, "/danqing/v1/queue")[1] if r["state"] == "running" and (r.get("step") or 0) >= 3]
        if running:
            step = running[0]["step"]
            break
        time.sleep(0.1)
    assert step is not None
    started = time.time()
    assert call(ray_app, "/sdapi/v1/interrupt", {})[0] == 200
    thread.join(60)
    took = time.time() - started
    status, body = result["answer"]
    assert status == 200 and info(body)["interrupted"] is True, body
    assert took < 10, took
    started = time.time()
    assert post(ray_app, "/sdapi/v1/txt2img", {**JOB, "seed": 32})[0] == 200
    assert time.time() - started < 30


def test_a_model_switch_reaches_every_replica(ray_app):
    """Switched once at the front (A1111 options): both replicas' next jobs use the new model."""
    from test_sdapi import call

    assert call(ray_app, "/sdapi/v1/options", {"sd_model_checkpoint": "danqing-demo-single.safetensors"})[0] == 200
    try:
        results = {}
        threads = [threading.Thread(target=lambda n=n: results.update({n: post(ray_app, "/sdapi/v1/txt2img",
                                                                                {**JOB, "steps": 10, "seed": 60 + n})}))
                   for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        texts = [info(body)["infotexts"][0] for _, body in results.values()]
        assert len({info(body)["engine"]["replica"] for _, body in results.values()}) == 2
        assert all("Model: danqing-demo-single" in t and "Model hash:" in t for t in texts), texts
    finally:
        call(ray_app, "/sdapi/v1/options", {"sd_model_checkpoint": "danqing-demo-zh"})


def test_a_replica_prepares_the_request_as_the_studio_does(ray_app):
    """The request is prepared where the model is (tasks/prepare.py): a Chinese prompt for the
    English-only SDXL reaches its CLIP encoders in the demo translator's English (the PNG keeps
    the Chinese), and Z-Image runs its own Euler and says so, as without Ray."""
    from test_sdapi import call

    try:
        assert call(ray_app, "/sdapi/v1/options", {"sd_model_checkpoint": "danqing-demo-xl"})[0] == 200
        status, body = post(ray_app, "/sdapi/v1/txt2img", {**JOB, "prompt": "雨后的西湖，远山"})
        assert status == 200, body
        text = info(body)["infotexts"][0]
        assert "Original prompt: 雨后的西湖，远山" in text, text
        assert not any("\u4e00" <= c <= "\u9fff" for c in text.split("\n")[0]), text  # the prompt line is English
        assert call(ray_app, "/sdapi/v1/options", {"sd_model_checkpoint": "danqing-demo-z-image-turbo"})[0] == 200
        status, body = post(ray_app, "/sdapi/v1/txt2img", {**JOB, "cfg_scale": 0, "sampler_name": "DPM++ 2M"})
        assert status == 200, body
        assert "Sampler: Euler" in info(body)["infotexts"][0], info(body)["infotexts"][0]
        assert info(body)["notices"]["sampler"]["asked"] == "DPM++ 2M", info(body)
    finally:
        call(ray_app, "/sdapi/v1/options", {"sd_model_checkpoint": "danqing-demo-zh"})


class InProcessHandle:
    """Serve's streaming handle calls (``options(stream=True).run.remote(job)``, iterated) on one
    EngineReplica in this process: the front's RayEngine and the replica's code, without Ray."""

    def __init__(self, replica) -> None:
        self.replica = replica

    def options(self, **_):
        return self

    @property
    def run(self):
        return self

    def remote(self, job):
        import asyncio

        events, loop = self.replica.run(job), asyncio.new_event_loop()
        try:
            while True:
                try:
                    yield loop.run_until_complete(events.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.close()


def test_the_expand_button_runs_where_the_model_is(studio, demo_models, tmp_path):
    """Under --ray the front process holds no model: ✨ 扩写 is sent to a replica, which knows the
    language its model reads; the words are those of the same prompter and seed without Ray, and
    the front never loads the base model."""
    from conftest import make_studio
    from pipelines.serve.remote import RayEngine, RayOptions
    from pipelines.serve.replica import EngineReplica

    front = make_studio(demo_models, tmp_path / "outputs")
    front.use_remote(RayEngine(InProcessHandle(EngineReplica(front.store.settings)), RayOptions()))
    words = front.expand_prompt("竹林里的大熊猫", 7)
    assert words == studio.expand_prompt("竹林里的大熊猫", 7) and words != "竹林里的大熊猫"
    assert not front.store.is_loaded()


# Last: the replica it kills is restarted by Ray, which takes a while.
def test_a_replica_killed_mid_job_loses_no_job(ray_app):
    """Two long jobs, one on each replica; one replica's process is killed while they run:
    both jobs still come back with their images (the lost one sent again), and the replica
    is back for the next job."""
    warm = [post(ray_app, "/sdapi/v1/txt2img", {**JOB, "seed": 900 + i}) for i in range(2)]
    pids = {info(body)["engine"]["replica"] for _, body in warm}
    results = {}

    def client(n: int) -> None:
        results[n] = post(ray_app, "/sdapi/v1/txt2img", {**JOB, "width": 128, "height": 128, "steps": 40,
                                                         "seed": 500 + n})

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    from test_sdapi import call

    deadline = time.time() + 120
    while time.time() < deadline:  # both running, a few steps in
        status, line = call(ray_app, "/danqing/v1/queue")
        running = [r for r in line if r["state"] == "running" and (r.get("step") or 0) >= 2]
        if len(running) == 2:
            break
        time.sleep(0.2)
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(300)
    assert all(status == 200 for status, _ in results.values()), results
    attempts = sorted(info(body)["engine"]["attempts"] for _, body in results.values())
    assert attempts == [1, 2], attempts  # the killed replica's job was sent once more
    # The next jobs run (Ray restarted the replica).
    status, body = post(ray_app, "/sdapi/v1/txt2img", {**JOB, "seed": 77})
    assert status == 200 and info(body)["engine"]["replica"] != victim
