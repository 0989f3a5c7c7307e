"""An existing AUTOMATIC1111 or ComfyUI install read in place (issue 16, first part): its LoRA,
ControlNet and ESRGAN folders are listed beside Danqing's own and used from where they are,
read-only; names from them are resolved as strictly as Danqing's own."""

import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ROOT
from pipelines.errors import ParamError
from pipelines.outputs import OutputWriter
from pipelines.requests import Control, Txt2Img, Upscale
from pipelines.store import EngineSettings, ModelFolders, ModelStore, install_folders
from pipelines.studio import Studio


def a1111_tree(demo_models, root):
    """A fake A1111 install holding copies of demo files where A1111 keeps them."""
    (root / "models" / "Stable-diffusion" / "majicmix").mkdir(parents=True)
    shutil.copy(demo_models / "checkpoints" / "danqing-demo-single.safetensors",
                root / "models" / "Stable-diffusion" / "majicmix" / "a1111-single.safetensors")
    (root / "models" / "VAE").mkdir(parents=True)
    shutil.copy(demo_models / "vae" / "danqing-demo-vae.safetensors", root / "models" / "VAE" / "a1111-vae.safetensors")
    (root / "embeddings").mkdir()
    shutil.copy(demo_models / "embeddings" / "demo-neg.pt", root / "embeddings" / "EasyNegative.pt")
    lora = root / "models" / "Lora" / "styles"
    lora.mkdir(parents=True)
    shutil.copy(demo_models / "lora" / "danqing-demo-kohya.safetensors", lora / "a1111-ink.safetensors")
    shutil.copy(demo_models / "lora" / "danqing-demo-kohya.png", lora / "a1111-ink.png")
    (root / "models" / "ESRGAN").mkdir(parents=True)
    shutil.copy(demo_models / "upscalers" / "RealESRGAN_x2plus-tiny.pth", root / "models" / "ESRGAN" / "a1111-x2.pth")
    cn = root / "extensions" / "sd-webui-controlnet" / "models"
    cn.mkdir(parents=True)
    shutil.copytree(demo_models / "controlnet" / "demo-canny", cn / "a1111-canny")
    return root


def comfy_tree(demo_models, root):
    (root / "models" / "loras").mkdir(parents=True)
    shutil.copy(demo_models / "lora" / "danqing-demo-peft.safetensors", root / "models" / "loras" / "comfy-peft.safetensors")
    (root / "models" / "upscale_models").mkdir(parents=True)
    shutil.copy(demo_models / "upscalers" / "RealESRGAN_x4plus-tiny.pth", root / "models" / "upscale_models" / "comfy-x4.pth")
    return root


@pytest.fixture(scope="module")
def installs(demo_models, tmp_path_factory):
    base = tmp_path_factory.mktemp("installs")
    return a1111_tree(demo_models, base / "stable-diffusion-webui"), comfy_tree(demo_models, base / "ComfyUI")


@pytest.fixture(scope="module")
def studio(demo_models, installs, tmp_path_factory):
    from pipelines.demo import DEMO_MODEL

    a1111, comfy = installs
    extra = install_folders("a1111", a1111) + install_folders("comfyui", comfy)
    settings = EngineSettings(model=DEMO_MODEL, models_dir=demo_models, device="cpu", demo=True, allow_download=False,
                              extra_model_dirs=extra)
    out = tmp_path_factory.mktemp("installs-out")
    return Studio(ModelStore(settings), OutputWriter(out))


def test_only_the_folders_an_install_has_are_read(installs):
    a1111, comfy = installs
    kinds = [(kind, path.relative_to(a1111).as_posix()) for kind, path in install_folders("a1111", a1111)]
    assert kinds == [("checkpoints", "models/Stable-diffusion"), ("lora", "models/Lora"),
                     ("controlnet", "extensions/sd-webui-controlnet/models"), ("upscalers", "models/ESRGAN"),
                     ("vae", "models/VAE"), ("embeddings", "embeddings")]
    assert [kind for kind, _ in install_folders("comfyui", comfy)] == ["lora", "upscalers"]


def test_the_installs_models_are_listed_beside_danqings_own(studio):
    loras = {row["name"]: row for row in studio.loras()}
    assert "danqing-demo-kohya.safetensors" in loras  # Danqing's own still first
    assert "styles/a1111-ink.safetensors" in loras and "comfy-peft.safetensors" in loras
    assert loras["styles/a1111-ink.safetensors"]["preview"].endswith("a1111-ink.png")
    assert {"a1111-x2.pth", "comfy-x4.pth"} <= set(studio.upscalers())
    assert "a1111-canny" in studio.controlnets()
    # A1111's single-file checkpoint, VAE and embedding, listed and usable from where they are.
    assert {"ref": "majicmix/a1111-single.safetensors", "local": True, "kind": "file", "hash": None,
            "family": "sd1"} in studio.model_choices()
    assert "a1111-vae.safetensors" in studio.vae_choices()
    assert "EasyNegative" in {row["name"] for row in studio.embeddings()}


def test_a_comfyui_extra_model_paths_file_adds_the_folders_it_names(installs, tmp_path):
    """ComfyUI users already have extra_model_paths.yaml pointing at their A1111 folders."""
    a1111, comfy = installs
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(
        "a111:\n"
        f"    base_path: {a1111}\n"
        "    checkpoints: models/Stable-diffusion\n"
        "    vae: models/VAE\n"
        "    loras: |\n"
        "         models/Lora\n"
        "         models/LyCORIS\n"
        "    embeddings: embeddings\n"
        "    hypernetworks: models/hypernetworks\n"
        "comfyui:\n"
        f"    base_path: {os.path.relpath(comfy, tmp_path)}\n"  # relative to the file, as in ComfyUI
        "    upscale_models: models/upscale_models\n", encoding="utf-8")
    from pipelines.store import read_extra_model_paths

    pairs = read_extra_model_paths(config)
    kinds = {(kind, path.name) for kind, path in pairs}
    assert kinds == {("checkpoints", "Stable-diffusion"), ("vae", "VAE"), ("lora", "Lora"), ("embeddings", "embeddings"),
                     ("upscalers", "upscale_models")}  # LyCORIS does not exist here: skipped
    folders = ModelFolders(tmp_path / "models", pairs)
    assert "majicmix/a1111-single.safetensors" in folders.list_single_files("checkpoints")
    assert "comfy-x4.pth" in folders.list_files("upscalers")
    config.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ValueError):
        read_extra_model_paths(config)
    run = subprocess.run([sys.executable, str(ROOT / "app.py"), "--extra-model-paths", str(config), "--demo",
                          "--no-browser"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DANQING_CACHE": str(tmp_path / "cache")})
    assert run.returncode != 0 and "extra_model_paths.yaml" in run.stderr and "ComfyUI" in run.stderr


def test_models_are_used_where_they_are(studio, installs, tmp_path):
    a1111, _ = installs
    before = sorted(p.name for p in a1111.rglob("*"))
    plain, _ = studio.txt2img(Txt2Img.from_fields(prompt="山水", width=64, height=64, num_inference_steps=2, seed=3))
    styled, info = studio.txt2img(Txt2Img.from_fields(prompt="山水 <lora:a1111-ink:1>", width=64, height=64,
                                                      num_inference_steps=2, seed=3))
    assert [list(pair) for pair in info["loras"]] == [["a1111-ink", 1.0]]
    with Image.open(plain[0]) as a, Image.open(styled[0]) as b:
        assert a.tobytes() != b.tobytes()
    big, _ = studio.upscale_images([Image.new("RGB", (16, 16), (200, 30, 30))], Upscale("comfy-x4.pth", 4))
    with Image.open(big[0]) as image:
        assert image.size == (64, 64)
    control = tmp_path / "lines.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(control)
    paths, _ = studio.control(Control.build(Txt2Img.from_fields(prompt="山", width=64, height=64, num_inference_steps=1),
                                            [{"kind": "canny", "image": str(control), "model": "a1111-canny"}]))
    assert paths
    assert sorted(p.name for p in a1111.rglob("*")) == before  # nothing written into the install


def test_names_from_an_install_are_resolved_strictly(studio, installs):
    folders = studio.store.folders
    for bad in ("../stable-diffusion-webui/models/Lora/styles/a1111-ink.safetensors", "/etc/passwd", "styles/../../x"):
        with pytest.raises(ParamError):
            folders.resolve("lora", bad)
    outside = installs[0].parent / "secret.safetensors"
    outside.write_bytes(b"x")
    (installs[0] / "models" / "Lora" / "link.safetensors").symlink_to(outside)
    assert "link.safetensors" not in folders.list_files("lora")
    with pytest.raises(ParamError):
        folders.resolve("lora", "link.safetensors")


def test_a_folder_that_is_no_install_stops_the_start_in_both_languages(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "app.py"), "--a1111-dir", str(tmp_path / "nothing"), "--demo",
                          "--no-browser"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DANQING_CACHE": str(tmp_path / "cache")})
    assert run.returncode != 0
    assert "不是一个安装目录" in run.stderr and "is not an install folder" in run.stderr


def test_model_cards_beside_a_lora_add_words_description_and_weight(demo_models, tmp_path):
    import json

    from pipelines.formats.cards import read_card
    from pipelines.tasks.lora import list_loras

    models = tmp_path / "models"
    (models / "lora").mkdir(parents=True)
    lora = models / "lora" / "ink.safetensors"
    shutil.copy(demo_models / "lora" / "danqing-demo-kohya.safetensors", lora)
    (models / "lora" / "ink.json").write_text(json.dumps(
        {"description": "水墨风格", "activation text": "ink wash, 水墨", "sd version": "SD1", "preferred weight": 0.7}),
        encoding="utf-8")
    (models / "lora" / "ink.civitai.info").write_text(json.dumps(
        {"trainedWords": ["水墨", "monochrome"], "baseModel": "SD 1.5",
         "description": "<p>Chinese <b>ink</b> painting</p><script>alert(1)</script>", "model": {"name": "Ink Wash 水墨"}}),
        encoding="utf-8")
    store = ModelStore(EngineSettings(models_dir=models, device="cpu", demo=True, allow_download=False))
    row = next(r for r in list_loras(store) if r["name"] == "ink.safetensors")
    assert row["trigger_words"][:3] == ["ink wash", "水墨", "monochrome"]  # the cards' first, no repeats
    assert row["description"] == "水墨风格" and row["title"] == "Ink Wash 水墨" and row["preferred_weight"] == 0.7
    # The Civitai card alone: HTML reduced to text; a broken or huge card is ignored, never fatal.
    (models / "lora" / "ink.json").unlink()
    assert read_card(lora)["description"] == "Chinese ink painting alert(1)"
    (models / "lora" / "ink.civitai.info").write_text("{not json", encoding="utf-8")
    assert read_card(lora) == {}
    (models / "lora" / "ink.civitai.info").write_bytes(b" " * (2 << 20))
    assert read_card(lora) == {} and any(r["name"] == "ink.safetensors" for r in list_loras(store))
