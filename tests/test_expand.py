"""提示词扩写 (issue 32, third part): a short prompt made detailed by the demo prompter (a
Qwen2-style instruct model), seeded, recorded in the PNG, read back as off, run as a GPU job;
without a prompter a Chinese sentence says which to download."""

import shutil

import pytest
from PIL import Image

from conftest import make_studio
from pipelines.demo.prompter import DEMO_PROMPTER
from pipelines.demo.sdxl import DEMO_SDXL
from pipelines.errors import ParamError
from pipelines.formats import infotext
from pipelines.formats.pnginfo import parse_parameters
from pipelines.requests import Txt2Img

SMALL = dict(width=64, height=64, num_inference_steps=2)


def test_expansion_adds_words_after_the_typed_prompt_seeded_and_recorded(studio):
    typed = "雨后的西湖"
    paths, info = studio.txt2img(Txt2Img.from_fields(prompt=typed, expand=True, seed=5, **SMALL))
    found = info["notices"]["expansion"]
    assert found["prompter"] == DEMO_PROMPTER and found["typed"] == typed
    assert found["prompt"].startswith(typed) and found["words"] and len(found["prompt"]) > len(typed)
    again = studio.txt2img(Txt2Img.from_fields(prompt=typed, expand=True, seed=5, **SMALL))[1]["notices"]["expansion"]
    assert again["prompt"] == found["prompt"]  # same seed, same expansion
    with Image.open(paths[0]) as image:
        text = image.info["parameters"]
    fields = parse_parameters(text)
    assert fields["prompt"] == found["prompt"] and fields["fields"]["Prompt expansion"] == DEMO_PROMPTER
    assert list(fields["fields"])[-1] == "Version"
    # Read back, the switch is off: the saved prompt already holds the words.
    assert infotext.read(text).values["expand"] is False


def test_the_expand_button_runs_as_a_job_and_is_seeded(studio):
    one = studio.expand_prompt("竹林里的大熊猫", 7)
    assert one.startswith("竹林里的大熊猫") and one != "竹林里的大熊猫"
    assert studio.expand_prompt("竹林里的大熊猫", 7) == one
    with pytest.raises(ParamError) as err:
        studio.expand_prompt("  ", 7)
    assert err.value.code == "prompter_empty"


def test_on_an_english_model_the_words_are_english_and_the_chinese_is_translated(demo_models, tmp_path):
    own = make_studio(demo_models, tmp_path / "out", model=DEMO_SDXL)
    paths, info = own.txt2img(Txt2Img.from_fields(prompt="雨后的西湖", expand=True, seed=3, **SMALL))
    assert info["notices"]["expansion"]["typed"] == "雨后的西湖"
    translated = info["notices"]["translation"]
    assert translated["prompt"] == info["notices"]["expansion"]["prompt"]  # expanded first, then translated
    assert not any("\u4e00" <= c <= "\u9fff" for c in translated["english_prompt"])


def test_without_a_prompter_the_job_says_which_to_download(demo_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(demo_models, models, ignore=shutil.ignore_patterns("prompters"))
    own = make_studio(models, tmp_path / "out")
    with pytest.raises(ParamError) as err:
        own.txt2img(Txt2Img.from_fields(prompt="雨后的西湖", expand=True, **SMALL))
    assert err.value.code == "prompter_missing" and "Qwen" in err.value.fields["suggestion"]
    assert not list((tmp_path / "out").rglob("*.png"))
