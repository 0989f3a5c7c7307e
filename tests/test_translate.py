"""Chinese prompts on a model that reads only English (issue 32, the translator): the demo
SDXL's CLIP encoders get the demo translator's English, A1111's syntax survives, the PNG says
the English and keeps the Chinese, 历史 finds the Chinese; without a translator the job is
refused in Chinese (or runs as typed when translation is off); PAI's Chinese encoder is left
alone; translations are cached."""

import shutil

import pytest
import torch
from PIL import Image

from conftest import make_studio
from pipelines.demo.sdxl import DEMO_SDXL
from pipelines.demo.translator import DEMO_TRANSLATOR
from pipelines.errors import ParamError
from pipelines.formats.pnginfo import parse_parameters
from pipelines.formats.prompt_translate import plan
from pipelines.requests import Txt2Img
from pipelines.tasks import translate

SMALL = dict(width=64, height=64, num_inference_steps=2, seed=3)


def test_only_chinese_phrases_are_translated_and_the_syntax_stays():
    p = plan("<lora:ink:0.8> (雨后的西湖:1.2)，远山, masterpiece BREAK [模糊]、xl-style小船")
    assert p.phrases == ["雨后的西湖", "远山", "模糊", "小船"]
    english = p.assemble(["West Lake after rain", "distant mountains", "blurry", "a boat"])
    assert english == ("<lora:ink:0.8> (West Lake after rain:1.2), distant mountains, masterpiece BREAK "
                       "[blurry], xl-style a boat")
    assert plan("a cat, masterpiece").phrases == []


@pytest.fixture(scope="module")
def xl(demo_models, tmp_path_factory):
    return make_studio(demo_models, tmp_path_factory.mktemp("translate-out"), model=DEMO_SDXL)


def _encoder_inputs(store):
    """Token ids each call of the first text encoder got."""
    seen = []
    handle = store.base().text_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0] if args else kwargs["input_ids"]).clone()), with_kwargs=True)
    return seen, handle


def test_the_encoder_reads_the_translation_and_the_png_keeps_both(xl):
    seen, handle = _encoder_inputs(xl.store)
    try:
        paths, info = xl.txt2img(Txt2Img.from_fields(prompt="(雨后的西湖:1.2)，远山 BREAK 小船", negative_prompt="模糊",
                                                     loras=[["danqing-demo-xl-kohya", 0.5]], **SMALL))
    finally:
        handle.remove()
    notice = info["notices"]["translation"]
    english = notice["english_prompt"]
    assert notice["translator"] == DEMO_TRANSLATOR and notice["prompt"] == "(雨后的西湖:1.2)，远山 BREAK 小船"
    assert english.startswith("(") and ":1.2)" in english and " BREAK " in english
    assert not any("\u4e00" <= c <= "\u9fff" for c in english + notice["english_negative_prompt"])
    # The encoder got the English tokens (chunked around BREAK), not the Chinese.
    tokenizer = xl.store.base().tokenizer
    got = tokenizer.decode(torch.cat([ids.flatten() for ids in seen]).tolist(), skip_special_tokens=True)
    english_words = [w for w in tokenizer.decode(tokenizer(english.replace("BREAK", " ")).input_ids,
                                                  skip_special_tokens=True).split() if w.isalpha()]
    assert english_words and all(w in got for w in english_words)
    with Image.open(paths[0]) as image:
        fields = parse_parameters(image.info["parameters"])
    assert fields["prompt"].startswith(english) and "<lora:danqing-demo-xl-kohya:0.5>" in fields["prompt"]
    assert fields["fields"]["Original prompt"] == "(雨后的西湖:1.2)，远山 BREAK 小船"
    assert fields["fields"]["Original negative prompt"] == "模糊"
    assert list(fields["fields"])[-1] == "Version"
    # 历史 finds the picture by the Chinese the designer typed.
    page = xl.history(text="雨后的西湖")
    assert any(entry.path.endswith(paths[0].name) for entry in page.entries)


def test_translations_are_cached_and_the_translator_is_not_kept(xl, monkeypatch):
    loads = []
    real = translate._load
    monkeypatch.setattr(translate, "_load", lambda store, name: loads.append(name) or real(store, name))
    for _ in range(2):
        xl.txt2img(Txt2Img.from_fields(prompt="江南水乡，樱花", **SMALL))
    assert len(loads) <= 1  # the second job's phrases come from the cache
    assert not [row for row in xl.store.resident_models() if "translator" in row["kind"]]


def test_without_a_translator_the_job_is_refused_in_chinese_or_runs_as_typed(demo_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(demo_models, models, ignore=shutil.ignore_patterns("translators"))
    own = make_studio(models, tmp_path / "out", model=DEMO_SDXL)
    with pytest.raises(ParamError) as err:
        own.txt2img(Txt2Img.from_fields(prompt="雨后的西湖", **SMALL))
    assert err.value.code == "translator_missing" and err.value.fields["suggestion"] == translate.SUGGESTED
    from strings import error_text, load

    assert "读不懂中文" in error_text(load("zh"), err.value.code, err.value.fields)
    assert not list((tmp_path / "out").rglob("*.png"))  # nothing made silently
    paths, info = own.txt2img(Txt2Img.from_fields(prompt="雨后的西湖", translate=False, **SMALL))
    assert info["notices"]["translation"] == {"untranslated": True}
    with Image.open(paths[0]) as image:
        fields = parse_parameters(image.info["parameters"])
    assert fields["prompt"] == "雨后的西湖" and fields["fields"]["Danqing translate"] == "False"
    # English prompts need nothing
    assert own.txt2img(Txt2Img.from_fields(prompt="a lake after rain", **SMALL))[1]["notices"].get("translation") is None


def test_a_model_that_reads_chinese_is_left_alone(studio):
    paths, info = studio.txt2img(Txt2Img.from_fields(prompt="雨后的西湖", **SMALL))
    assert "translation" not in info["notices"]
    with Image.open(paths[0]) as image:
        assert parse_parameters(image.info["parameters"])["prompt"] == "雨后的西湖"


def test_an_edited_translation_is_the_editors_own(xl):
    from pipelines.requests import Caller

    ming = Caller(client="c1", user="小明")
    hong = Caller(client="c2", user="小红")
    xl.edit_translation("江南水乡", "a water town, my own words", ming)
    try:
        mine = xl.txt2img(Txt2Img.from_fields(prompt="江南水乡", **SMALL), ming)[1]["notices"]["translation"]
        theirs = xl.txt2img(Txt2Img.from_fields(prompt="江南水乡", **SMALL), hong)[1]["notices"]["translation"]
    finally:
        xl.edit_translation("江南水乡", "", ming)
    assert mine["english_prompt"] == "a water town, my own words" and mine["edited"]
    assert theirs["english_prompt"] != mine["english_prompt"] and not theirs["edited"]


def test_edits_sent_with_a_job_are_used_where_it_runs(xl):
    """A replica in another process gets the user's edits with the job (translate.edits_of):
    prepared there, the English is the user's, not the translator's."""
    from pipelines.tasks.prepare import prepare

    translate.remember_edit("湖边的小屋", "a cabin by the lake, morning mist", "丙")
    sent = translate.edits_of("丙")
    assert sent == {"湖边的小屋": "a cabin by the lake, morning mist"} and translate.edits_of("丁") == {}
    request, notices = prepare(xl.store, Txt2Img.from_fields(prompt="湖边的小屋", **SMALL), edits=sent)
    assert request.prompt == "a cabin by the lake, morning mist" and notices["translation"]["edited"] is True
    request, notices = prepare(xl.store, Txt2Img.from_fields(prompt="湖边的小屋", **SMALL), edits={})
    assert request.prompt != "a cabin by the lake, morning mist" and notices["translation"]["edited"] is False
