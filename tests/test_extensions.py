"""Extensions through the real loader: the two built-ins (风格预设, X/Y 对比图), the
post-processing hook, and broken extensions that must not stop the app."""

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import ACCOUNTS
from extensions import load_extensions
from pipelines.outputs import OutputWriter
from pipelines.formats.pnginfo import parse_parameters


@pytest.fixture(scope="module")
def builtins():
    return load_extensions([])


def test_builtin_extensions_load(builtins):
    from extensions import ExtensionAPI
    from ui.common import GPU

    assert ExtensionAPI.concurrency_id == GPU  # extension tabs share the one GPU queue
    rows = {e.name: e.summary() for e in builtins}
    assert rows["styles"]["status"] == "ok" and rows["xy_grid"]["status"] == "ok"
    assert rows["styles"]["tabs"] == ["风格预设"] and rows["xy_grid"]["tabs"] == ["X/Y 对比图"]
    assert {"国风", "水墨", "工笔", "电商白底", "赛博朋克"} <= set(builtins.style_names())


def test_styles_apply_to_prompt_and_negative(builtins):
    prompt, negative = builtins.apply_styles("竹林里的大熊猫 <lora:danqing-demo-kohya:0.8>", "文字", ["水墨", "没有这个风格"])
    assert prompt.startswith("竹林里的大熊猫，水墨画") and prompt.endswith("<lora:danqing-demo-kohya:0.8>")
    assert negative.startswith("文字，") and "3D渲染" in negative
    # A style without {prompt} is appended; an empty part leaves the text alone.
    prompt, negative = builtins.apply_styles("a cat", "", ["通用负面"])
    assert prompt == "a cat" and negative.startswith("低质量")


def test_user_styles_file_wins_and_gbk_is_read(tmp_path, monkeypatch):
    user = tmp_path / "styles.csv"
    user.write_bytes("name,prompt,negative_prompt\n我的风格,{prompt}，金色光线,灰暗\n".encode("gbk"))
    monkeypatch.setenv("DANQING_STYLES", str(user))
    loaded = load_extensions([])
    assert loaded.style_names() == ["我的风格"]
    assert loaded.apply_styles("猫", "", ["我的风格"]) == ("猫，金色光线", "灰暗")


def test_xy_grid_saves_one_annotated_image(builtins, studio):
    grid = builtins.get("xy_grid").module
    base = dict(prompt="山水", negative_prompt="", sampler="Euler", seed=-1, num_inference_steps=1,
                guidance_scale=7, width=64, height=64)
    path, info = grid.run_grid(studio, base, "cfg", "3，7", "seed", "1-2")
    image = Image.open(path)
    assert image.size == (info["left"] + 2 * 64, info["top"] + 2 * 64) == tuple(info["size"])
    assert info["left"] > 0 and info["top"] > 0
    if info["font"]:  # a CJK font on this system: Chinese axis labels
        assert info["y"]["labels"] == ["种子: 1", "种子: 2"] and info["x"]["labels"] == ["CFG: 3", "CFG: 7"]
    else:
        assert info["y"]["labels"] == ["Seed: 1", "Seed: 2"]
    fields = parse_parameters(image.info["parameters"])["fields"]
    assert fields["X Type"] == "CFG scale" and fields["Y Values"] == "1, 2" and fields["Script"] == "X/Y plot"
    assert path.parent.parent == studio.outputs.root and path.name.endswith("-xy.png")
    # The cells are the images the Studio made: the two seeds differ.
    pixels = np.asarray(image.convert("RGB"))
    top, left = info["top"], info["left"]
    assert not np.array_equal(pixels[top:top + 64, left:left + 64], pixels[top + 64:top + 128, left:left + 64])


def test_xy_grid_ascii_labels_and_lora_axis(builtins, studio):
    grid = builtins.get("xy_grid").module
    base = dict(prompt="竹林", sampler="Euler", seed=3, num_inference_steps=1, guidance_scale=7, width=64,
                height=64, lora="danqing-demo-kohya.safetensors")
    path, info = grid.run_grid(studio, base, "lora_weight", "0, 1", "sampler", "Euler", font_path=None)
    assert info["x"]["labels"] == ["LoRA weight: 0", "LoRA weight: 1"] and info["y"]["labels"] == ["Sampler: Euler"]
    assert all(ord(c) < 128 for c in "".join(info["x"]["labels"] + info["y"]["labels"]))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    top, left = info["top"], info["left"]
    assert not np.array_equal(pixels[top:, left:left + 64], pixels[top:, left + 64:left + 128])


def test_xy_grid_prompt_search_and_replace_and_a_model_axis(builtins, studio):
    """A1111's Prompt S/R (the first value is searched for, each value replaces it, in both
    prompts) and a base-model axis: each column is made on its model and the model in use is
    the same afterwards; every cell's own PNG says which model and prompt made it."""
    grid = builtins.get("xy_grid").module
    base = dict(prompt="竹林里的熊猫", negative_prompt="竹林", sampler="Euler", seed=5, num_inference_steps=1,
                guidance_scale=7, width=64, height=64)
    before = studio.current_model()
    path, info = grid.run_grid(studio, base, "model", f"danqing-demo-st, {before}", "prompt_sr",
                               '竹林, 雪山, "海边, 夜晚"', font_path=None)
    assert studio.current_model() == before
    assert info["x"]["values"] == ["danqing-demo-st", before]
    assert info["y"]["values"] == ["竹林", "雪山", "海边, 夜晚"]
    cells = [parse_parameters(Image.open(studio.outputs.root / studio.outputs.day_dir().name / name).info["parameters"])
             for name in info["cells"]]
    assert [c["fields"]["Model"] for c in cells] == ["danqing-demo-st", before] * 3
    assert [c["prompt"] for c in cells[::2]] == ["竹林里的熊猫", "雪山里的熊猫", "海边, 夜晚里的熊猫"]
    assert [c["negative_prompt"] for c in cells[::2]] == ["竹林", "雪山", "海边, 夜晚"]
    fields = parse_parameters(Image.open(path).info["parameters"])["fields"]
    assert fields["X Type"] == "Checkpoint name" and fields["Y Type"] == "Prompt S/R"
    pixels = np.asarray(Image.open(path).convert("RGB"))
    top, left = info["top"], info["left"]  # the two models make different pictures from one seed
    assert not np.array_equal(pixels[top:top + 64, left:left + 64], pixels[top:top + 64, left + 64:left + 128])


@pytest.mark.parametrize("args,code", [
    (("prompt_sr", "雪山, 海边", "seed", "1"), "sr_not_found"),
    (("cfg", "1, 2", "cfg", "3"), "same_axis"),
    (("steps", "1-40", "seed", "1"), "too_many_values"),
    (("steps", "two", "seed", "1"), "bad_value"),
    (("lora_weight", "0, 1", "seed", "1"), "lora_needed"),
])
def test_xy_grid_refuses_bad_axes_before_any_work(builtins, args, code):
    grid = builtins.get("xy_grid").module
    with pytest.raises(grid.GridError) as error:
        grid.run_grid(None, {"prompt": "猫"}, *args)
    assert error.value.code == code


def test_postprocessors_run_after_every_save(tmp_path):
    folder = tmp_path / "exts"
    folder.mkdir()
    (folder / "sidecar.py").write_text(textwrap.dedent("""
        from pathlib import Path

        def setup(api):
            api.add_postprocessor(lambda path, info: Path(path).with_suffix(".txt").write_text(info["parameters"]))
            def broken(path, info):
                raise RuntimeError("boom")
            api.add_postprocessor(broken)
    """))
    loaded = load_extensions([folder], builtin=False)
    writer = OutputWriter(tmp_path / "outputs", on_saved=loaded.postprocess)
    path = writer.save(Image.new("RGB", (8, 8)), "a cat\nSteps: 1, Seed: 1, Size: 8x8", 1)
    assert path.is_file() and path.with_suffix(".txt").read_text().startswith("a cat")
    assert loaded.get("sidecar").runtime_errors == 1  # logged and counted; the image is saved anyway


def test_broken_extensions_are_listed_and_the_app_starts(guarded_app):
    client = guarded_app.client(auth=ACCOUNTS[1])
    rows = {row["name"]: row for row in client.predict(api_name="/system_info")["extensions"]}
    assert rows["styles"]["status"] == rows["xy_grid"]["status"] == rows["good"]["status"] == "ok"
    assert rows["bad_import"]["status"] == "failed" and "ModuleNotFoundError" in rows["bad_import"]["error"]
    assert rows["bad_tab"]["status"] == "failed" and "tab exploded" in rows["bad_tab"]["error"]
    assert rows["bad_tab"]["styles"] == 0  # what a failed extension registered is dropped
    assert rows["no_setup"]["status"] == "failed"
    text = json.dumps(client.config, ensure_ascii=False)
    assert "EXTENSION-OK" in text and "测试风格" in text and "X/Y 对比图" in text
    broken_tab = next(c for c in client.config["components"] if c.get("props", {}).get("label") == "坏标签页")
    assert broken_tab["props"]["visible"] is False
    # And the app works: the X/Y grid through its own event, on the shared queue.
    image, info = client.predict("猫", "", "Euler", 5, 1, 7, 64, 64, "", 0.8, "steps", "1, 2", "cfg", "7",
                                 api_name="/xy_grid")
    assert Image.open(image).size == (info["left"] + 128, info["top"] + 64)
