"""训练 LoRA, the engine (issue 17, first part): a LoRA trained on the demo model from a few
generated pictures lowers the denoising loss on them, is written in the Kohya/A1111 layout that
Danqing's loader and diffusers' ``load_lora_weights`` both read, resumes exactly after a stop,
and leaves the shared base as it found it."""

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_studio
from pipelines.demo import DEMO_MODEL
from pipelines.demo.captioner import DEMO_CAPTIONER
from pipelines.errors import DanqingError
from pipelines.formats.lora import read_metadata
from pipelines.requests import TrainLora, Txt2Img
from pipelines.tasks import train as training
from pipelines.tasks.lora import apply_loras


@pytest.fixture(scope="module")
def bench(demo_models, tmp_path_factory):
    """A studio over a copy of the demo bundle (LoRAs are written into its models/lora), and
    four pictures of a red square on a blue ground, shifted."""
    models = tmp_path_factory.mktemp("train-models")
    for kind in ("checkpoints", "lora"):
        shutil.copytree(demo_models / kind, models / kind)
    studio = make_studio(models, tmp_path_factory.mktemp("train-out"))
    pictures = tmp_path_factory.mktemp("pictures")
    paths = []
    for i in range(4):
        image = Image.new("RGB", (80, 64), (30, 60, 200))
        image.paste((220, 40, 40), (10 + 8 * i, 12, 42 + 8 * i, 44))
        path = pictures / f"p{i}.png"
        image.save(path)
        paths.append(str(path))
    return studio, paths


def request(paths, name, **knobs):
    values = dict(steps=30, rank=4, alpha=4, learning_rate=2e-3, resolution=64, seed=3)
    return TrainLora.build(name, "redsq", paths, ["红色方块"] * len(paths), **{**values, **knobs})


def denoising_loss(store, req, loras=()) -> float:
    """The model's MSE on the training pictures at fixed noise and timesteps (no randomness)."""
    from diffusers import DDPMScheduler

    base = store.base()
    apply_loras(store, loras)
    pixels = torch.stack([training._pixels(p, (req.resolution, req.resolution)) for p in req.images])
    scheduler = DDPMScheduler.from_config(base.scheduler.config)
    with torch.no_grad():
        latents = base.vae.encode(pixels).latent_dist.mode() * base.vae.config.scaling_factor
        ids = base.tokenizer(list(req.captions), padding="max_length", max_length=training.token_window(base),
                             truncation=True, return_tensors="pt").input_ids
        cond = base.text_encoder(ids)[0]
        total = 0.0
        generator = torch.Generator().manual_seed(0)
        for t in (100, 300, 500, 700, 900):
            noise = torch.randn(latents.shape, generator=generator)
            steps = torch.full((len(latents),), t)
            pred = base.unet(scheduler.add_noise(latents, noise, steps), steps, encoder_hidden_states=cond).sample
            total += float(torch.nn.functional.mse_loss(pred, noise))
    apply_loras(store, ())
    return total / 5


def image(studio, loras=()):
    paths, _ = studio.txt2img(Txt2Img.from_fields(prompt="redsq 红色方块", width=64, height=64, num_inference_steps=3,
                                                  seed=11, loras=[list(x) for x in loras]))
    with Image.open(paths[0]) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_training_lowers_the_loss_and_writes_a_kohya_lora_both_loaders_read(bench, tmp_path):
    studio, paths = bench
    store = studio.store
    store.switch(DEMO_MODEL)
    before_image = image(studio)
    req = request(paths, "红方块")
    before = denoising_loss(store, req)
    steps_seen = []
    result = training.train(store, req, tmp_path / "run", store.folders.folder("lora"),
                            on_step=lambda n, total, loss: steps_seen.append(n))
    assert result.path == store.folders.folder("lora") / "红方块.safetensors" and not result.stopped
    assert steps_seen == list(range(1, 31)) and len(result.losses) == 30
    assert result.path.with_suffix(".png").is_file()  # the preview beside it
    # The shared base is as it was: no training adapter, same pixels without a LoRA.
    assert "danqing-train" not in (getattr(store.base().unet, "peft_config", None) or {})
    assert np.array_equal(image(studio), before_image)
    # Through Danqing's own loader: lower loss on the pictures it learnt, another image.
    after = denoising_loss(store, req, [("红方块.safetensors", 1.0)])
    assert after < before * 0.9, (before, after)
    assert np.abs(image(studio, [("红方块.safetensors", 1.0)]) - before_image).mean() > 1
    # Kohya/A1111 keys and ss_* metadata.
    from safetensors.torch import load_file

    tensors = load_file(str(result.path))
    assert all(k.startswith("lora_unet_") for k in tensors)
    assert any(k.endswith(".lora_down.weight") for k in tensors) and any(k.endswith(".alpha") for k in tensors)
    meta = read_metadata(result.path)
    assert meta["ss_network_dim"] == "4" and meta["ss_steps"] == "30" and meta["modelspec.trigger_phrase"] == "redsq"
    assert "红色方块" in meta["ss_tag_frequency"]
    assert any(r["name"] == "红方块.safetensors" and "redsq" in r["trigger_words"] for r in studio.loras())
    # Through diffusers' own load_lora_weights, on a pipeline of its own.
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(store.folders.resolve("checkpoints", DEMO_MODEL), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe("redsq", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(1),
                 output_type="np").images
    pipe.load_lora_weights(str(result.path), adapter_name="trained")
    styled = pipe("redsq", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(1),
                  output_type="np").images
    assert np.abs(plain - styled).mean() > 1e-3
    # The name is taken now: refused, the file untouched.
    stamp = result.path.stat().st_mtime_ns
    with pytest.raises(DanqingError) as err:
        training.train(store, req, tmp_path / "run2", store.folders.folder("lora"))
    assert err.value.code == "train_name_taken" and result.path.stat().st_mtime_ns == stamp


def test_stop_then_resume_gives_the_uninterrupted_adapter(bench, tmp_path):
    studio, paths = bench
    store = studio.store
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    whole = training.train(store, request(paths, "whole", save_every=10), tmp_path / "whole", lora_dir)
    assert [p.name for p in whole.checkpoints] == ["whole-step10.safetensors", "whole-step20.safetensors"]
    cancel = threading.Event()
    req = request(paths, "halves", save_every=10)
    first = training.train(store, req, tmp_path / "halves", lora_dir, cancel=cancel,
                           on_step=lambda n, total, loss: cancel.set() if n == 15 else None)
    assert first.stopped and first.path is None and first.steps_done == 15
    assert not (lora_dir / "halves.safetensors").exists()
    second = training.train(store, req, tmp_path / "halves", lora_dir, resume=True)
    assert second.path is not None and second.steps_done == 30 and len(second.losses) == 30
    assert second.losses[:15] == first.losses
    from safetensors.torch import load_file

    a, b = load_file(str(whole.path)), load_file(str(second.path))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bad_training_requests_are_refused(bench):
    _, paths = bench
    for kwargs, code in (
        (dict(name="../evil", trigger="x", images=paths), "train_bad_name"),
        (dict(name="ok", trigger="x", images=[]), "train_image_count"),
        (dict(name="ok", trigger="x", images=paths, captions=["a"]), "train_caption_count"),
        (dict(name="ok", trigger="x", images=paths, preset="huge"), "train_bad_preset"),
        (dict(name="ok", trigger="x", images=paths, rank=0), "out_of_range"),
        (dict(name="ok", trigger="x", images=paths, resolution=100), "size_not_multiple_of_8"),
        (dict(name="ok", trigger="x", images=paths, warp=9), "train_unknown_option"),
    ):
        with pytest.raises(DanqingError) as err:
            TrainLora.build(**kwargs)
        assert err.value.code == code, kwargs
    preset = TrainLora.build("快速", "x", paths, preset="fast")
    assert preset.steps == 400 and preset.rank == 8 and preset.captions == ("x",) * 4


def test_text_encoder_training_and_the_loras_in_use_come_back(bench, tmp_path):
    """Training the text encoder too writes lora_te_ keys the loaders read; a LoRA that was in
    use before the run is in use after it, with the same pixels."""
    studio, paths = bench
    store = studio.store
    styled_before = image(studio, [("danqing-demo-kohya.safetensors", 0.8)])
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    result = training.train(store, request(paths, "with-te", steps=6, train_text_encoder=True, text_encoder_lr=1e-3),
                            tmp_path / "run", lora_dir)
    assert np.array_equal(image(studio, [("danqing-demo-kohya.safetensors", 0.8)]), styled_before)
    assert not [n for n, _ in store.base().text_encoder.named_parameters() if "danqing-train" in n]
    from safetensors.torch import load_file

    keys = load_file(str(result.path)).keys()
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_") for k in keys)
    assert any(k.startswith("lora_unet_") for k in keys)
    shutil.copy(result.path, store.folders.folder("lora") / "with-te.safetensors")
    assert np.abs(image(studio, [("with-te.safetensors", 1.0)]) - image(studio)).mean() > 0.5


def test_the_headless_command_trains_stops_and_resumes(bench, demo_models, tmp_path):
    """python train.py: pictures and .txt captions from a folder, the LoRA in the --models-dir's
    lora/ (in demo mode too: never in the demo cache other checkouts share); a bad name is
    refused in Chinese; --resume after the run finished refuses to overwrite it."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    _, paths = bench
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i, path in enumerate(paths):
        shutil.copy(path, pictures / f"{i}.png")
        if i < 3:  # the last picture's caption comes from the demo bundle's captioner
            (pictures / f"{i}.txt").write_text("红色方块, 蓝底", encoding="utf-8")
    cache = tmp_path / "cache"
    shutil.copytree(demo_models, cache / demo_models.name)  # the bundle, so nothing else sees what lands in it
    env = {**os.environ, "DANQING_CACHE": str(cache)}
    command = [sys.executable, str(ROOT / "train.py"), "--demo", "--images", str(pictures), "--name", "命令行",
               "--trigger", "redsq", "--steps", "4", "--rank", "2", "--resolution", "64",
               "--captioner", DEMO_CAPTIONER, "--outputs-dir", str(tmp_path / "out"),
               "--models-dir", str(tmp_path / "mine")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    made = tmp_path / "mine" / "lora" / "命令行.safetensors"
    assert made.is_file() and "step 4/4" in run.stdout
    assert not list((cache / demo_models.name / "lora").glob("命令行*"))
    import json

    written = next(line for line in run.stdout.splitlines() if line.startswith("3.png: "))[len("3.png: "):]
    assert written  # the captioner's words, printed and trained on
    assert json.loads(read_metadata(made)["ss_tag_frequency"])["danqing"] == {
        "redsq": 4, "红色方块": 3, "蓝底": 3, **{t.strip(): 1 for t in written.split(",") if t.strip()}}
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert again.returncode == 2 and "已经有 命令行" in again.stderr
    bad = subprocess.run([*command[:5], "--name", "../x"], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert bad.returncode == 2 and "LoRA 名称不合法" in bad.stderr


def test_a_teammates_picture_during_training_is_the_idle_servers(bench, tmp_path):
    """Training yields between steps: a generation asked for meanwhile runs before the training
    ends, with the pixels it has on an idle server (the training adapter off for it), with and
    without a LoRA of its own; the training still finishes all its steps."""
    from pipelines.requests import Caller

    studio, paths = bench
    idle_plain = image(studio)
    idle_styled = image(studio, [("danqing-demo-kohya.safetensors", 0.8)])
    started, finished = threading.Event(), threading.Event()
    outcome = {}

    def run():
        outcome["result"] = studio.train_lora(
            request(paths, "让路", steps=60), tmp_path / "run", client=Caller("trainer", "", "10.0.0.1"),
            on_step=lambda n, total, loss: started.set())
        finished.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(60)
    during = []
    for loras in ((), [("danqing-demo-kohya.safetensors", 0.8)]):
        paths_, _ = studio.txt2img(Txt2Img.from_fields(prompt="redsq 红色方块", width=64, height=64, num_inference_steps=3,
                                                       seed=11, loras=[list(x) for x in loras]),
                                   client=Caller("teammate", "", "10.0.0.2"))
        with Image.open(paths_[0]) as im:
            during.append(np.asarray(im.convert("RGB"), dtype=np.int16))
    assert not finished.is_set()  # the pictures did not wait for the whole run
    thread.join(120)
    assert outcome["result"].steps_done == 60 and outcome["result"].path is not None
    assert np.array_equal(during[0], idle_plain) and np.array_equal(during[1], idle_styled)


def test_uploads_zips_and_bad_pictures_are_checked_before_anything_is_written(bench, tmp_path):
    """Pictures, captions and zips are gathered into the run's folder only; a zip that leaves
    its folder, holds a link, is a bomb, or a non-picture, a corrupt picture: refused in Chinese,
    nothing written outside the run's folder."""
    import stat
    import zipfile

    from pipelines.formats import uploads
    from strings import error_text, load

    studio, paths = bench
    S = load("zh")
    ok = tmp_path / "ok.zip"
    with zipfile.ZipFile(ok, "w") as zf:
        zf.write(paths[0], "set/a.png")
        zf.writestr("set/a.txt", "红色方块")
        zf.write(paths[1], "b.png")
        zf.writestr("__MACOSX/._b.png", b"junk")
        zf.writestr("notes.md", "ignored")
    found = studio.prepare_training("打包", [str(ok), paths[2]], user="")
    assert [p.rsplit("/", 1)[1] for p in found["images"]] == ["a.png", "b.png", "p2.png"]
    assert found["captions"] == ["红色方块", "", ""]
    assert found["run_dir"].endswith("training/打包")

    def zip_with(name, data=b"x", link=False, compress=False):
        path = tmp_path / f"bad{len(list(tmp_path.glob('bad*.zip')))}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
            info = zipfile.ZipInfo(name)
            if link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
        return path

    outside = tmp_path / "escaped.png"
    cases = [
        (zip_with("../escaped.png"), "train_zip_unsafe"),
        (zip_with("/tmp/abs.png"), "train_zip_unsafe"),
        (zip_with("link.png", b"/etc/passwd", link=True), "train_zip_unsafe"),
        (zip_with("bomb.png", b"\0" * (20 << 20), compress=True), "train_zip_bomb"),
        (tmp_path / "notes.pdf", "train_not_image"),
        (tmp_path / "broken.png", "train_bad_image"),
        (tmp_path / "empty.zip", "train_no_images"),
    ]
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("readme.txt", "no pictures")
    for source, code in cases:
        with pytest.raises(DanqingError) as err:
            uploads.gather([str(source)], tmp_path / "run" / code)
        assert err.value.code == code, (source, err.value.code)
        assert "{" not in error_text(S, err.value.code, err.value.fields)  # a whole Chinese sentence
    assert not outside.exists() and not any(tmp_path.glob("abs.png"))
    with pytest.raises(DanqingError) as err:
        studio.prepare_training("../逃出", [paths[0]])
    assert err.value.code == "train_bad_name"


def test_aspect_ratio_buckets_and_epochs(bench, tmp_path):
    """Kohya's buckets at 512 (about 512² pixels, sides multiples of 64); a tall and a wide picture
    keep their shape; an epoch shows every picture `repeats` times in one-bucket batches; a run
    by epochs trains epochs × batches steps and writes the buckets into the metadata."""
    sizes = training.bucket_sizes(512)
    assert {(512, 512), (448, 576), (576, 448), (384, 640), (320, 768), (256, 1024), (1024, 256)} <= set(sizes)
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in sizes)
    assert training._bucket_of((600, 900), sizes) == (384, 640)  # 2:3 → the nearest shape, 3:5
    assert training._bucket_of((1000, 1000), sizes) == (512, 512)

    studio, square = bench
    tall, wide = tmp_path / "tall.png", tmp_path / "wide.png"
    Image.new("RGB", (60, 120), (200, 30, 30)).save(tall)
    Image.new("RGB", (160, 80), (30, 200, 30)).save(wide)
    paths = square[:2] + [str(tall), str(wide)]
    shapes = training.assign_buckets(tuple(paths), 64, buckets=True)
    assert shapes[:2] == [(64, 64), (64, 64)]
    assert shapes[2][1] > shapes[2][0] and shapes[3][0] > shapes[3][1]  # tall stays tall, wide stays wide
    assert training.assign_buckets(tuple(paths), 64, buckets=False) == [(64, 64)] * 4
    assert training._pixels(str(tall), shapes[2]).shape == (3, shapes[2][1], shapes[2][0])

    epoch = training.epoch_batches(shapes, repeats=3, batch_size=2, seed=5, epoch=0)
    seen = [i for batch in epoch for i in batch]
    assert sorted(seen) == sorted(list(range(4)) * 3)
    assert all(len({shapes[i] for i in batch}) == 1 for batch in epoch)
    assert epoch == training.epoch_batches(shapes, 3, 2, 5, 0) != training.epoch_batches(shapes, 3, 2, 5, 1)

    req = TrainLora.build("分桶", "mix", paths, [""] * 4, steps=999, epochs=2, repeats=3, batch_size=2, rank=2,
                          alpha=2, resolution=64, seed=5, preview=False)
    result = studio.train_lora(req, tmp_path / "run")
    assert result.total_steps == result.steps_done == 2 * len(epoch)
    assert dict(result.buckets) == {(64, 64): 2, shapes[2]: 1, shapes[3]: 1}
    meta = read_metadata(result.path)
    assert meta["ss_enable_bucket"] == "True" and meta["ss_num_epochs"] == "2"
    assert meta["ss_max_train_steps"] == str(2 * len(epoch))
    counts = {tuple(b["resolution"]): b["count"] for b in json.loads(meta["ss_bucket_info"])["buckets"].values()}
    assert counts == {(64, 64): 6, shapes[2]: 3, shapes[3]: 3}
    with pytest.raises(DanqingError) as caught:
        TrainLora.build("太多", "", paths, None, epochs=20000, repeats=100, resolution=64).total_steps(50)
    assert caught.value.code == "train_too_many_steps"
    result.path.unlink()


def test_captions_from_a_local_captioner(bench, demo_models):
    """A transformers captioner in models/captioners (the demo's BLIP in Taiyi-BLIP's layout) is
    listed and writes what transformers' own generate writes, Chinese characters joined; a
    missing or broken captioner is a Chinese message, and nothing is downloaded."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    import strings
    from pipelines.tasks.captions import tidy

    studio, paths = bench
    folder = studio.store.folders.folder("captioners")
    shutil.copytree(demo_models / "captioners" / DEMO_CAPTIONER, folder / DEMO_CAPTIONER)
    (folder / "坏的").mkdir()
    (folder / "坏的" / "config.json").write_text('{"model_type": "blip"}', encoding="utf-8")
    (folder / "不是模型").mkdir()
    assert studio.captioners() == [DEMO_CAPTIONER, "坏的"]

    written = studio.caption_pictures(paths[:3], DEMO_CAPTIONER)
    processor = BlipProcessor.from_pretrained(folder / DEMO_CAPTIONER, local_files_only=True)
    model = BlipForConditionalGeneration.from_pretrained(folder / DEMO_CAPTIONER, local_files_only=True).eval()
    with torch.no_grad():
        ids = model.generate(**processor(images=[Image.open(p).convert("RGB") for p in paths[:3]],
                                         return_tensors="pt"), max_new_tokens=60, do_sample=False, num_beams=1)
    expected = ["".join(text.split()) for text in processor.batch_decode(ids, skip_special_tokens=True)]
    assert written == expected and len(written) == 3 and all(written)
    assert tidy("一 只 猫 ， 水墨 风格 。") == "一只猫，水墨风格"
    assert tidy(" a cat  sitting\n on a mat. ") == "a cat sitting on a mat"

    S = strings.load("zh")
    for name, code in (("没有这个", "captioner_missing"), ("坏的", "captioner_load_failed"),
                       ("不是模型", "captioner_load_failed"), ("../lora", "bad_model_name")):
        with pytest.raises(DanqingError) as caught:
            studio.caption_pictures(paths[:1], name)
        assert caught.value.code == code, name
        assert code == "bad_model_name" or "看图说话模型" in strings.error_text(S, code, caught.value.fields)
    # The base is untouched: a picture after captioning is the same as before.
    assert studio.store.is_loaded()
