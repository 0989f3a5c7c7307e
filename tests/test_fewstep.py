"""极速 (issue 19): few-step LoRAs and base models recognised by their metadata and key layout,
the switch that sets sampler, steps and CFG as each method's authors publish them, the
infotext that records what ran, and turning it off giving back the exact base pixels."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from pipelines.demo.lora import DEMO_LORAS
from pipelines.formats import fewstep
from pipelines.formats.lora import read_header
from pipelines.formats.pnginfo import parse_parameters
from pipelines.requests import Txt2Img
from strings import load

S = load("zh")
SMALL = {"width": 64, "height": 64, "seed": 7, "prompt": "竹林里的大熊猫，水墨画"}


def recognised(path):
    metadata, keys = read_header(path)
    return fewstep.recognise_lora(path.name, metadata, keys)


def test_few_step_loras_are_recognised_by_layout_metadata_and_name(demo_models, tmp_path):
    lora = demo_models / "lora"
    # LCM-LoRA under its published file name: nothing in the name, the layout says it.
    lcm = recognised(lora / DEMO_LORAS["lcm"])
    assert (lcm.method, lcm.evidence, lcm.sampler, lcm.steps, lcm.cfg) == ("lcm", "layout", "LCM", 4, 1.0)
    # Hyper-SD's 2-step LoRA: DDIM on trailing timesteps, 2 steps, no guidance.
    hyper = recognised(lora / DEMO_LORAS["hyper"])
    assert (hyper.method, hyper.sampler, hyper.schedule_type, hyper.steps, hyper.cfg) == (
        "hyper", "DDIM", "SGM Uniform", 2, 0.0)
    # Renamed to nothing telling: still a few-step LoRA by its keys.
    anonymous = tmp_path / "my_file.safetensors"
    shutil.copy(lora / DEMO_LORAS["hyper"], anonymous)
    assert recognised(anonymous).evidence == "layout"
    # Attention-only keys, but the metadata names TCD.
    state = load_file(lora / "danqing-demo-peft.safetensors")
    tcd_file = tmp_path / "style.safetensors"
    save_file(state, tcd_file, metadata={"modelspec.title": "TCD-SD15 (trajectory consistency distillation)"})
    tcd = recognised(tcd_file)
    assert (tcd.method, tcd.evidence, tcd.sampler, tcd.eta, tcd.cfg) == ("tcd", "metadata", "TCD", 0.3, 0.0)
    # Style LoRAs are not: peft (attention + text encoder), Kohya LoCon with a text encoder, PAI.
    for name in ("danqing-demo-peft.safetensors", "danqing-demo-kohya.safetensors", DEMO_LORAS["pai"]):
        assert recognised(lora / name) is None, name
    # The layout alone: ResNets and time embeddings without the text encoder; with it, not.
    keys = [k for k in read_header(lora / DEMO_LORAS["lcm"])[1]]
    assert fewstep.distillation_layout(keys)
    assert not fewstep.distillation_layout(keys + ["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"])
    assert not fewstep.distillation_layout([k for k in keys if "time_emb_proj" not in k])
    # Names and cards: Hyper-SD's CFG-preserved and 1-step files, an LCM-merged checkpoint, an
    # LCM-distilled U-Net (guidance embedding).
    assert fewstep.from_text("Hyper-SD15-8steps-CFG-lora.safetensors", "name").as_dict()["cfg_range"] == [5, 8]
    one = fewstep.from_text("Hyper-SD15-1step-lora.safetensors", "name")
    assert (one.sampler, one.steps, one.eta) == ("TCD", 1, 1.0)
    assert fewstep.recognise_base("dreamshaper_8LCM.safetensors").method == "lcm-merged"
    assert fewstep.recognise_base("x", {"time_cond_proj_dim": 256}).method == "lcm-unet"
    assert fewstep.recognise_base("danqing-demo-zh", {"time_cond_proj_dim": None}) is None
    assert fewstep.from_text("a_clcmx_style", "name") is None  # letters around "lcm": not the word


def test_the_switch_sets_what_the_method_needs_and_off_gives_back_the_exact_base_pixels(studio):
    """极速 on: the LCM-LoRA in a free slot, LCM sampler, 4 steps, CFG 1; the image's infotext says
    so. Off: the old settings back, and the same seed gives the base image to the pixel."""
    from ui.panel import fast_switch

    before = ["DPM++ 2M Karras", 3, 7.0, "Automatic", 0.3]
    names, weights = ["", "", "", ""], [0.8] * 4
    base_paths, _ = studio.txt2img(Txt2Img.from_fields(SMALL, sampler=before[0], num_inference_steps=before[1],
                                                       guidance_scale=before[2]))
    box, note, settings, new_names, new_weights, saved = fast_switch(S, studio, True, before, names, weights, None)
    assert box is True and "LCM-LoRA" in note and "按权重结构识别" in note
    assert settings == ["LCM", 4, 1.0, "Automatic", 0.3]
    assert new_names[0] == DEMO_LORAS["lcm"] and new_weights[0] == 1.0
    loras = [[n, w] for n, w in zip(new_names, new_weights) if n]
    paths, info = studio.txt2img(Txt2Img.from_fields(SMALL, sampler=settings[0], num_inference_steps=settings[1],
                                                     guidance_scale=settings[2], schedule_type=settings[3],
                                                     loras=loras))
    fields = parse_parameters(Image.open(paths[0]).info["parameters"])["fields"]
    assert (fields["Sampler"], fields["Steps"], fields["CFG scale"]) == ("LCM", "4", "1.0")
    # Named as A1111 and Civitai read it: a diffusers folder's LoRA by its folder, no file ending.
    folder = DEMO_LORAS["lcm"].rsplit("/", 1)[0]
    assert fields["Lora hashes"].startswith(f"{folder}: ") and f"<lora:{folder}:1>" in Image.open(paths[0]).info["parameters"]
    # Off: everything back as it was, and the base pixels with it.
    box, note, settings, new_names, new_weights, saved = fast_switch(S, studio, False, settings, new_names,
                                                                     new_weights, saved)
    assert settings == before and new_names == names and new_weights == weights and saved is None
    assert "恢复" in note
    again, _ = studio.txt2img(Txt2Img.from_fields(SMALL, sampler=settings[0], num_inference_steps=settings[1],
                                                  guidance_scale=settings[2], schedule_type=settings[3],
                                                  loras=[[n, w] for n, w in zip(new_names, new_weights) if n]))
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(base_paths[0])))


def test_hyper_and_tcd_settings_run_and_are_written_down(studio):
    """Hyper-SD: DDIM on trailing timesteps, written as A1111's ``Schedule type``; TCD's gamma as
    ``Eta`` (its default when none was asked, so the text reproduces the image)."""
    hyper = Txt2Img.from_fields(SMALL, sampler="DDIM", schedule_type="SGM Uniform", num_inference_steps=2,
                                guidance_scale=0, loras=[[DEMO_LORAS["hyper"], 1.0]])
    paths, info = studio.txt2img(hyper)
    fields = parse_parameters(Image.open(paths[0]).info["parameters"])["fields"]
    assert (fields["Sampler"], fields["Schedule type"], fields["Steps"]) == ("DDIM", "SGM Uniform", "2")
    # Trailing timesteps really run: a different image than the default spacing.
    leading, _ = studio.txt2img(Txt2Img.from_fields(SMALL, sampler="DDIM", num_inference_steps=2, guidance_scale=0,
                                                    loras=[[DEMO_LORAS["hyper"], 1.0]]))
    assert not np.array_equal(np.asarray(Image.open(paths[0])), np.asarray(Image.open(leading[0])))
    tcd, _ = studio.txt2img(Txt2Img.from_fields(SMALL, sampler="TCD", num_inference_steps=2, guidance_scale=0))
    assert parse_parameters(Image.open(tcd[0]).info["parameters"])["fields"]["Eta"] == "0.3"
    same, _ = studio.txt2img(Txt2Img.from_fields(SMALL, sampler="TCD", num_inference_steps=2, guidance_scale=0, eta=0.3))
    other, _ = studio.txt2img(Txt2Img.from_fields(SMALL, sampler="TCD", num_inference_steps=2, guidance_scale=0, eta=0.9))
    assert np.array_equal(np.asarray(Image.open(tcd[0])), np.asarray(Image.open(same[0])))
    assert not np.array_equal(np.asarray(Image.open(tcd[0])), np.asarray(Image.open(other[0])))
    # With the draft mode: 64² → ×4, the few-step settings in the upscaled image's text too.
    paths, info = studio.txt2img(Txt2Img.from_fields(SMALL, sampler="LCM", num_inference_steps=4, guidance_scale=1,
                                                     draft=True, loras=[[DEMO_LORAS["lcm"], 1.0]]))
    texts = [parse_parameters(Image.open(p).info["parameters"])["fields"] for p in paths]
    assert all(f["Sampler"] == "LCM" and f["Steps"] == "4" for f in texts) and any("Hires upscaler" in f for f in texts)


def test_without_a_few_step_model_the_switch_stays_off_and_says_what_to_get(studio, monkeypatch):
    from ui.panel import fast_switch

    everything = studio.loras
    monkeypatch.setattr(studio, "loras", lambda: [r for r in everything() if not r["fewstep"]])
    box, note, settings, names, weights, saved = fast_switch(S, studio, True, ["Euler", 20, 7.0, "Automatic", 0.3],
                                                             [""] * 4, [0.8] * 4, None)
    assert box is False and saved is None
    assert "models/lora/" in note and "lcm-lora-sdv1-5" in note and "Hyper-SD" in note


def test_picking_a_few_step_lora_by_hand_proposes_its_settings(studio):
    from ui.panel import fast_picked, fast_switch

    out = fast_picked(S, studio, DEMO_LORAS["hyper"], ["Euler a", 25, 6.5, "Automatic", 0.3], None)
    box, note, *settings, saved = out
    assert box is True and "Hyper-SD" in note and settings == ["DDIM", 2, 0.0, "SGM Uniform", 0.3]
    # Off again: the old settings back, the slots as the person left them.
    _, _, restored, names, weights, _ = fast_switch(S, studio, False, settings, [DEMO_LORAS["hyper"], "", "", ""],
                                                    [1.0] * 4, saved)
    assert restored == ["Euler a", 25, 6.5, "Automatic", 0.3]
    assert all(isinstance(n, dict) for n in names)  # gr.update(): unchanged
    # A style LoRA proposes nothing.
    assert fast_picked(S, studio, "danqing-demo-kohya.safetensors", ["Euler a", 25, 6.5, "Automatic", 0.3], None)[-1] is None


@pytest.mark.parametrize("bad", [{"schedule_type": "Exponential"}, {"sampler": "TCD", "eta": 1.5}])
def test_bad_schedule_or_eta_is_refused_in_chinese(bad):
    from pipelines.errors import DanqingError
    from strings import error_text

    with pytest.raises(DanqingError) as caught:
        Txt2Img.from_fields(SMALL, **bad)
    text = error_text(S, caught.value.code, caught.value.fields)
    assert "调度类型" in text or "超出范围" in text


def test_the_a1111_api_takes_lcm_tcd_and_the_schedulers(demo_app):
    from test_sdapi import call

    status, samplers = call(demo_app, "/sdapi/v1/samplers")
    assert {"LCM", "TCD"} <= {s["name"] for s in samplers}
    status, schedulers = call(demo_app, "/sdapi/v1/schedulers")
    assert status == 200 and {"automatic", "karras", "sgm_uniform"} == {s["name"] for s in schedulers}
    status, body = call(demo_app, "/sdapi/v1/txt2img", {"prompt": "熊猫", "width": 64, "height": 64, "steps": 2,
                                                        "sampler_name": "TCD", "scheduler": "sgm_uniform", "eta": 0.5,
                                                        "cfg_scale": 0, "seed": 3})
    assert status == 200, body
    info = json.loads(body["info"])
    text = info["infotexts"][0]
    assert "Sampler: TCD" in text and "Schedule type: SGM Uniform" in text and "Eta: 0.5" in text
    status, body = call(demo_app, "/sdapi/v1/txt2img", {"prompt": "熊猫", "width": 64, "height": 64, "steps": 2,
                                                        "scheduler": "Exponential"})
    assert status == 422 and "调度类型" in json.dumps(body, ensure_ascii=False)
