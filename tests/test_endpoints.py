"""A parameter said once (issue 30): the Gradio API's positional order of every endpoint only
grows at its end (ui/endpoints.PUBLISHED, frozen), and a field that declares itself
(``requests.param``) reaches the request check, the form, the infotext (written and read back),
the Gradio API and the A1111 API with no code of its own — shown by CFG rescale."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipelines.formats import infotext
from pipelines.requests import Txt2Img, declared_fields


@pytest.fixture(scope="module")
def built(studio):
    from extensions import load_extensions
    from ui.layout import UIOptions, build_ui

    return build_ui(studio, UIOptions(demo=True), load_extensions())


def endpoint_names(demo) -> dict[str, tuple[str, ...]]:
    info = demo.get_api_info()
    return {name.lstrip("/"): tuple(p["parameter_name"] for p in endpoint["parameters"])
            for name, endpoint in info["named_endpoints"].items()}


def test_every_endpoint_keeps_its_published_order_and_grows_only_at_the_end(built):
    from ui.endpoints import PUBLISHED

    now = endpoint_names(built)
    assert set(now) == set(PUBLISHED), "an endpoint was added or removed: add it to ui/endpoints.PUBLISHED"
    for name, published in PUBLISHED.items():
        assert now[name][:len(published)] == published, name
    # What came after the published names: exactly the fields Txt2Img declares itself.
    declared = tuple(f.name for f in declared_fields(Txt2Img))
    for name in ("txt2img", "canny", "depth", "img2img", "inpaint", "outpaint"):
        assert now[name][len(PUBLISHED[name]):] == tuple(d for d in declared if d not in PUBLISHED[name]), name


def test_a_declared_field_goes_everywhere_with_no_code_of_its_own(studio, built):
    from ui.panel import Panel  # noqa: F401  (the form has a control for it, by its field name)

    # 1. The request checks it by its declared range.
    with pytest.raises(Exception) as refused:
        Txt2Img.from_fields(prompt="猫", guidance_rescale=1.5)
    assert refused.value.code == "out_of_range"
    # 2. The form: a control, labelled from strings.py, found by the field's name.
    config = built.get_config_file()
    labels = {c["props"].get("label") for c in config["components"] if c.get("props", {}).get("elem_id") == "param-guidance_rescale"}
    assert labels == {"CFG 重缩放"}
    # 3. It changes the job, and the infotext writes it (and leaves it out at its default).
    base = dict(prompt="竹林", width=64, height=64, num_inference_steps=3, seed=5, guidance_scale=9, sampler="Euler")
    plain, _ = studio.txt2img(Txt2Img.from_fields(base))
    rescaled, info = studio.txt2img(Txt2Img.from_fields(base, guidance_rescale=0.7))
    with Image.open(plain[0]) as a, Image.open(rescaled[0]) as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))
        assert "CFG Rescale" not in a.info["parameters"]
        text = b.info["parameters"]
    assert "CFG Rescale: 0.7" in text and info["guidance_rescale"] == 0.7
    # 4. Read back into the field.
    assert infotext.read(text).values["guidance_rescale"] == 0.7
    assert infotext.read(Image.open(plain[0]).info["parameters"]).values["guidance_rescale"] == 0.0


def test_the_a1111_api_takes_a_declared_field_by_its_name():
    from api.schemas import Img2ImgRequest, Txt2ImgRequest

    assert Txt2ImgRequest(guidance_rescale=0.5).guidance_rescale == 0.5
    assert Img2ImgRequest().guidance_rescale == 0.0
    schema = json.dumps(Txt2ImgRequest.model_json_schema())
    assert "guidance_rescale" in schema


def test_infotext_reads_back_what_it_writes(studio):
    request = Txt2Img.from_fields(prompt="山水 <lora:danqing-demo-kohya:0.6>", negative_prompt="模糊", width=96, height=64,
                                  num_inference_steps=7, guidance_scale=6.5, seed=42, sampler="DPM++ 2M",
                                  clip_skip=2, schedule_type="Karras", hires_pass=True, hires_scale=1.5,
                                  hires_strength=0.45, hires_steps=4)
    prompt, fields = infotext.fields_of(request, model="m", lora_tags=[("danqing-demo-kohya", "abc", 0.6)],
                                        hires_pass="latent", version="Danqing test")
    read = infotext.read(infotext.write(prompt, request.negative_prompt, fields, request.seed))
    assert read.prompt == "山水" and read.negative_prompt == "模糊" and read.loras == [("danqing-demo-kohya", 0.6)]
    for name in ("width", "height", "num_inference_steps", "guidance_scale", "seed", "sampler", "clip_skip",
                 "schedule_type", "hires_pass", "hires_scale", "hires_strength", "hires_steps"):
        assert read.values[name] == getattr(request, name), name
    assert read.values["hires_upscaler"] == "latent" and read.mode == "txt2img"


def test_no_endpoint_describes_a_component_by_its_id(built):
    """A component without a label is described by its id ("parameter_70", "value_296"), which
    moves whenever a component is added before it: every one an endpoint reads or returns has a
    label, so the API description stays put (Gradio's Timer takes none: it is left out)."""
    info = built.get_api_info()
    by_id = [(name, kind, p.get("component")) for name, endpoint in info["named_endpoints"].items()
             for kind in ("parameters", "returns") for p in endpoint[kind]
             if (p.get("label") or "").startswith(("parameter_", "value_")) and p.get("component") != "Timer"]
    assert by_id == []
