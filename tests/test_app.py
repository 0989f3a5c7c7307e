"""The launched app, answered through gradio_client and raw HTTP, like a user's browser."""

import json
import subprocess
import sys
import urllib.request

import pytest
from PIL import Image

from conftest import ROOT, LaunchedApp
from pipelines.formats.pnginfo import parse_parameters, read_aigc_label


def test_txt2img_endpoint_returns_saved_images_with_metadata(demo_app):
    client = demo_app.client()
    gallery, info = client.predict(
        prompt="水墨山水，远山", negative_prompt="模糊", num_inference_steps=3, width=64, height=64,
        seed=42, num_images_per_prompt=2, sampler="Euler a", api_name="/txt2img",
    )
    meta = json.loads(info)
    assert meta["seed"] == 42 and meta["all_seeds"] == [42, 43]
    assert meta["sampler"] == "Euler a" and meta["model"] == "danqing-demo-zh"
    assert len(gallery) == 2
    # The file a user downloads from the gallery carries the parameters and the AIGC label.
    served = Image.open(gallery[0]["image"])
    parsed = parse_parameters(served.info["parameters"])
    assert parsed["prompt"] == "水墨山水，远山" and parsed["negative_prompt"] == "模糊"
    assert parsed["fields"]["Seed"] == "42" and parsed["fields"]["Sampler"] == "Euler a"
    label = read_aigc_label(served)
    assert label["Label"] == "1" and label["ContentProducer"] and label["ProduceID"]
    assert "TC260:AIGC" in served.info["XML:com.adobe.xmp"]
    # And it is saved under outputs/<date>/.
    saved = sorted(demo_app.outputs.glob("*/*.png"))
    assert [p.name for p in saved[-2:]] == meta["files"]


def test_same_seed_gives_identical_files_through_the_api(demo_app):
    client = demo_app.client()
    args = dict(prompt="国风 仕女", num_inference_steps=2, width=64, height=64, seed=9, api_name="/txt2img")
    first = Image.open(client.predict(**args)[0][0]["image"]).tobytes()
    second = Image.open(client.predict(**args)[0][0]["image"]).tobytes()
    assert first == second


def test_bad_size_gets_a_chinese_error(demo_app):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        demo_app.client().predict(prompt="猫", width=65, height=64, api_name="/txt2img")
    assert "8 的倍数" in str(info.value)
    # The server keeps serving.
    gallery, _ = demo_app.client().predict(prompt="猫", width=64, height=64, num_inference_steps=1, api_name="/txt2img")
    assert len(gallery) == 1


def test_png_info_endpoint_reads_parameters(demo_app):
    from gradio_client import handle_file

    client = demo_app.client()
    gallery, _ = client.predict(prompt="荷花", num_inference_steps=1, width=64, height=64, seed=5, api_name="/txt2img")
    text = client.predict(handle_file(gallery[0]["image"]), api_name="/png_info")
    assert text.startswith("荷花") and "Seed: 5" in text


def test_system_info_endpoint(demo_app):
    info = demo_app.client().predict(api_name="/system_info")
    assert info["demo"] is True and info["attention"] == "sdpa"


def test_page_shows_the_demo_banner(demo_app):
    config = json.loads(urllib.request.urlopen(demo_app.url + "config", timeout=10).read())
    texts = json.dumps(config, ensure_ascii=False)
    assert "演示模式" in texts and "文生图" in texts


def test_missing_model_offline_starts_the_demo_with_a_message(demo_models, demo_cache, tmp_path):
    app = LaunchedApp(["--model", "someone/missing-model", "--offline", "--models-dir", str(tmp_path / "models")],
                      demo_cache, tmp_path / "outputs")
    try:
        config = json.dumps(json.loads(urllib.request.urlopen(app.url + "config", timeout=10).read()), ensure_ascii=False)
        assert "未找到模型" in config and "someone/missing-model" in config
        assert (tmp_path / "models" / "checkpoints").is_dir()
        gallery, _ = app.client().predict(prompt="猫", width=64, height=64, num_inference_steps=1, api_name="/txt2img")
        assert len(gallery) == 1
    finally:
        app.stop()


def test_listen_without_auth_refuses_to_start():
    out = subprocess.run([sys.executable, str(ROOT / "app.py"), "--listen", "--demo", "--no-browser"],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"} | {k: v for k, v in __import__("os").environ.items() if k != "SPACE_ID"})
    assert out.returncode != 0
    assert "--auth" in out.stderr and "拒绝启动" in out.stderr


def test_help_documents_the_options():
    out = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], capture_output=True, text=True, timeout=60)
    for flag in ("--demo", "--model", "--models-dir", "--outputs-dir", "--host", "--port", "--listen",
                 "--auth", "--share", "--device", "--dtype", "--no-browser", "--insecure-no-auth"):
        assert flag in out.stdout
