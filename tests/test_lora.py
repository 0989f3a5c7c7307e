"""LoRA switching on the demo bundle: every format changes the image, none and weight 0 give
the base pixels back exactly, switching never reloads, and a bad LoRA is refused with its code
while the model stays exactly as it was."""

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_studio
from pipelines.tasks import lora
from pipelines.tasks import txt2img
from pipelines.errors import DanqingError, ParamError
from pipelines.requests import parse_prompt_loras, Txt2Img

SMALL = dict(prompt="竹林里的熊猫，水墨画", width=64, height=64, num_inference_steps=2, seed=321)
PEFT, KOHYA, PAI = "danqing-demo-peft", "danqing-demo-kohya.safetensors", "pai-poem-tiny"
ATTN2_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"


class Evil:
    """Unpickling this would create a file; the safe loader must refuse it instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _write_bad_loras(folder, outside):
    """Broken and foreign LoRAs next to the demo ones."""
    peft = load_file(folder / f"{PEFT}.safetensors")
    data = (folder / f"{PEFT}.safetensors").read_bytes()
    (folder / "bad-truncated.safetensors").write_bytes(data[: len(data) // 2])
    pai = (folder / "pai-poem-tiny" / "pytorch_lora_weights.bin").read_bytes()
    (folder / "bad-truncated.bin").write_bytes(pai[: len(pai) // 2])
    torch.save({"x": Evil(outside / "pwned")}, folder / "bad-pickle.bin")
    # SDXL: Kohya keys with the second text encoder, and peft keys with SDXL's 2048-wide context.
    save_file(
        {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.ones(4, 1280),
         "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.ones(1280, 4),
         "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.ones(4, 2048),
         "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.ones(640, 4)},
        folder / "bad-sdxl-kohya.safetensors",
    )
    save_file(
        {f"unet.{ATTN2_K}.lora_A.weight": torch.ones(4, 2048), f"unet.{ATTN2_K}.lora_B.weight": torch.ones(32, 4)},
        folder / "bad-sdxl-shapes.safetensors",
    )
    save_file(
        {"unet.foo.bar.lora_A.weight": torch.ones(4, 8), "unet.foo.bar.lora_B.weight": torch.ones(8, 4)},
        folder / "bad-nothing.safetensors",
    )
    save_file({"model.diffusion.weight": torch.ones(2, 2)}, folder / "bad-not-lora.safetensors")
    # Every lora_B dropped: the silent no-op the issue warns about.
    save_file({k: v for k, v in peft.items() if "lora_A" in k}, folder / "bad-half.safetensors")
    # The same LoRA saved through diffusers' convert_state_dict_to_diffusers (lora.down/up keys).
    from diffusers.utils import convert_state_dict_to_diffusers

    converted = {}
    for prefix in ("unet.", "text_encoder."):
        part = {k[len(prefix):]: v for k, v in peft.items() if k.startswith(prefix)}
        converted |= {prefix + k: v for k, v in convert_state_dict_to_diffusers(part).items()}
    save_file(converted, folder / "peft-as-diffusers.safetensors")
    (outside / "secret.safetensors").write_bytes(data)
    os.symlink(outside / "secret.safetensors", folder / "escape.safetensors")


@pytest.fixture(scope="module")
def lora_models(demo_models, tmp_path_factory):
    """A models folder of this module's own: the demo checkpoints and LoRAs plus bad ones."""
    root = tmp_path_factory.mktemp("lora-models")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(demo_models / "checkpoints", root / "checkpoints", copy_function=os.link)
    shutil.copytree(demo_models / "lora", root / "lora")
    _write_bad_loras(root / "lora", outside)
    return root


@pytest.fixture(scope="module")
def lstudio(lora_models, tmp_path_factory):
    """A studio whose base has never had a LoRA when ``baseline`` is taken."""
    studio = make_studio(lora_models, tmp_path_factory.mktemp("lora-out"))
    studio.baseline = pixels(studio.store)
    return studio


def pixels(store, loras=None, **kwargs):
    result = txt2img.run(store, Txt2Img.from_fields(**{**SMALL, **kwargs}, loras=loras))
    return np.asarray(result.images[0]).astype(int)


def adapter_names(store):
    base = store.base()
    return {c: sorted(getattr(getattr(base, c), "peft_config", {})) for c in ("unet", "text_encoder")}


# -- formats and exact restore -------------------------------------------------------------
@pytest.mark.parametrize("name", [PEFT, KOHYA, PAI, "pai-poem-tiny/pytorch_lora_weights.bin"])
def test_each_format_changes_the_image(lstudio, name):
    changed = pixels(lstudio.store, [[name, 1.0]])
    assert np.abs(changed - lstudio.baseline).mean() > 2.0


def test_none_and_weight_zero_restore_the_base_pixels_exactly(lstudio):
    store = lstudio.store
    pixels(store, [[PEFT, 1.0], [KOHYA, 0.8]])
    assert np.array_equal(pixels(store), lstudio.baseline)
    pixels(store, [[PAI, 1.0]])
    assert np.array_equal(pixels(store, [[PEFT, 0.0], [PAI, 0]]), lstudio.baseline)


def test_text_encoder_weights_are_applied(lstudio):
    store = lstudio.store
    base = store.base()
    ids = base.tokenizer(["竹林"], return_tensors="pt").input_ids

    def encode():
        with torch.no_grad():
            return base.text_encoder(ids)[0]

    lora.apply_loras(store, [])
    plain = encode()
    for name in (PEFT, KOHYA):
        lora.apply_loras(store, [(name, 1.0)])
        assert not torch.equal(encode(), plain)
    lora.apply_loras(store, [(PAI, 1.0)])  # U-Net only
    assert torch.equal(encode(), plain)


def test_two_loras_at_once_differ_from_each_alone(lstudio):
    store = lstudio.store
    both = pixels(store, [[PEFT, 1.0], [PAI, 0.7]])
    assert not np.array_equal(both, pixels(store, [[PEFT, 1.0]]))
    assert not np.array_equal(both, pixels(store, [[PAI, 0.7]]))
    assert np.array_equal(both, pixels(store, [[PEFT, 1.0], [PAI, 0.7]]))


def test_diffusers_converted_keys_load_as_the_same_lora(lstudio):
    """convert_state_dict_to_diffusers' lora.down/up keys: every lora_B arrives."""
    store = lstudio.store
    assert np.array_equal(pixels(store, [["peft-as-diffusers", 1.0]]), pixels(store, [[PEFT, 1.0]]))


def test_switching_never_reloads_and_a_repeat_is_a_no_op(lstudio, monkeypatch):
    store = lstudio.store
    pixels(store, [[PEFT, 1.0]])
    pixels(store, [[PAI, 0.5]])
    base, unet = store.base(), store.base().unet
    calls = {"load": 0, "set": 0}
    original_load, original_set = base.load_lora_weights, base.set_adapters

    def counting_load(*args, **kwargs):
        calls["load"] += 1
        return original_load(*args, **kwargs)

    def counting_set(*args, **kwargs):
        calls["set"] += 1
        return original_set(*args, **kwargs)

    monkeypatch.setattr(base, "load_lora_weights", counting_load)
    monkeypatch.setattr(base, "set_adapters", counting_set)
    for request in ([(PEFT, 1.0)], [(PAI, 0.5), (PEFT, 0.3)], [], [(PAI, 1.0)]):
        lora.apply_loras(store, request)
    assert calls == {"load": 0, "set": 3}
    lora.apply_loras(store, [(PAI, 1.0)])
    lora.apply_loras(store, [("pai-poem-tiny/pytorch_lora_weights.bin", 1.0)])  # same file
    assert calls == {"load": 0, "set": 3}
    assert store.base() is base and base.unet is unet


# -- prompt tags and validation -----------------------------------------------------------
def test_prompt_tags_are_parsed_and_removed():
    text, found = parse_prompt_loras("熊猫 <lora:danqing-demo-kohya:0.5>, 竹林 <LORA:pai-poem-tiny> 水墨")
    assert text == "熊猫 , 竹林 水墨"
    assert found == [("danqing-demo-kohya", 0.5), ("pai-poem-tiny", 1.0)]
    assert parse_prompt_loras("no tags") == ("no tags", [])
    params = Txt2Img.from_fields(prompt="山水 <lora:a:0.5>", loras=[["b", 1], ["a", "2"]])
    assert params.prompt == "山水"
    assert params.loras == (("b", 1.0), ("a", 0.5))


@pytest.mark.parametrize(
    "prompt, loras, code",
    [
        ("x", [[f"l{i}", 1] for i in range(9)], "too_many_loras"),
        ("x", [["a", 4.5]], "out_of_range"),
        ("x", [["a", float("nan")]], "not_a_number"),
        ("x", [["a" * 300, 1]], "text_too_long"),
        ("x", "a", "bad_lora_list"),
        ("x", [["a"]], "bad_lora_list"),
        ("x <lora:a:1:2>", None, "bad_lora_tag"),
        ("x <lora:a:-9>", None, "out_of_range"),
    ],
)
def test_bad_lora_requests_are_refused(prompt, loras, code):
    with pytest.raises(ParamError) as err:
        Txt2Img.from_fields(prompt=prompt, loras=loras)
    assert err.value.code == code


def test_a_tagged_prompt_applies_the_lora(lstudio):
    store = lstudio.store
    tagged = pixels(store, prompt=SMALL["prompt"] + " <lora:danqing-demo-kohya:0.7>")
    assert np.array_equal(tagged, pixels(store, [[KOHYA, 0.7]]))


# -- metadata ---------------------------------------------------------------------------------
def test_list_shows_trigger_words_hash_base_model_and_preview(lstudio, lora_models):
    rows = {row["name"]: row for row in lora.list_loras(lstudio.store)}
    assert {f"{PEFT}.safetensors", KOHYA, "pai-poem-tiny/pytorch_lora_weights.bin"} <= set(rows)
    assert "escape.safetensors" not in rows  # a symlink out of the folder is not listed
    kohya = rows[KOHYA]
    assert kohya["trigger_words"] == ["shuimo", "ink wash painting", "bamboo", "panda"]
    assert kohya["base_model"] == "sd_v1"
    assert kohya["preview"].endswith("danqing-demo-kohya.png")
    digest = hashlib.sha256((lora_models / "lora" / KOHYA).read_bytes()).hexdigest()
    assert kohya["hash"] == digest[:10]
    assert rows[f"{PEFT}.safetensors"]["trigger_words"] == [] and rows[f"{PEFT}.safetensors"]["preview"] is None
    assert rows["bad-truncated.safetensors"]["trigger_words"] == []  # listed, not fatal


# -- bad LoRAs change nothing ---------------------------------------------------------------
@pytest.mark.parametrize(
    "name, code",
    [
        ("bad-sdxl-kohya", "lora_family"),
        ("bad-sdxl-shapes", "lora_family"),
        ("bad-nothing", "lora_no_match"),
        ("bad-not-lora", "lora_unsupported_format"),
        ("bad-half", "lora_unsupported_format"),
        ("bad-truncated.safetensors", "lora_file_corrupt"),
        ("bad-truncated.bin", "lora_file_corrupt"),
        ("bad-pickle", "lora_unsafe_file"),
    ],
)
def test_a_bad_lora_is_refused_and_changes_nothing(lstudio, lora_models, name, code):
    store = lstudio.store
    before = pixels(store, [[PEFT, 0.8]])
    adapters = adapter_names(store)
    with pytest.raises(DanqingError) as err:
        pixels(store, [[PEFT, 0.8], [name, 1.0]])
    assert err.value.code == code
    assert adapter_names(store) == adapters
    assert np.array_equal(pixels(store, [[PEFT, 0.8]]), before)
    assert np.array_equal(pixels(store), lstudio.baseline)
    assert not (lora_models.parent / "pwned").exists()


def test_a_load_that_drops_matrices_is_undone(lstudio, lora_models, monkeypatch):
    """If diffusers leaves lora_B at zero (the silent no-op), the adapter is deleted again."""
    store = lstudio.store
    base = store.base()
    folder = lora_models / "lora"
    shutil.copy(folder / f"{PEFT}.safetensors", folder / "fresh-copy.safetensors")  # not loaded yet
    lora.apply_loras(store, [])
    adapters = adapter_names(store)
    original = base.load_lora_weights

    def dropping(state, **kwargs):
        return original({k: v for k, v in state.items() if "lora_B" not in k and ".up." not in k}, **kwargs)

    monkeypatch.setattr(base, "load_lora_weights", dropping)
    with pytest.raises(DanqingError) as err:
        lora.apply_loras(store, [(PEFT, 1.0), ("fresh-copy", 1.0)])
    assert err.value.code == "lora_load_failed"
    assert adapter_names(store) == adapters
    monkeypatch.undo()
    assert np.array_equal(pixels(store), lstudio.baseline)


@pytest.mark.parametrize("name", ["../lora/x", "/etc/passwd", "..", "a/../../b", "C:\\x", "escape", "nope"])
def test_names_resolve_only_inside_the_lora_folder(lstudio, name):
    with pytest.raises(ParamError) as err:
        lora.apply_loras(lstudio.store, [(name, 1.0)])
    assert err.value.code in ("bad_model_name", "unknown_model_name")


# -- cache bound and base switch --------------------------------------------------------------
def test_least_recently_used_adapter_is_evicted(lstudio, monkeypatch):
    store = lstudio.store
    monkeypatch.setattr(lora, "MAX_ADAPTERS", 2)
    state = store.adapters
    for name in (PEFT, KOHYA, PAI):
        lora.apply_loras(store, [(name, 1.0)])
    assert len(state.loaded) == 2
    names = adapter_names(store)["unet"]
    assert len(names) == 2
    loads = state.loads
    lora.apply_loras(store, [(KOHYA, 1.0)])
    assert state.loads == loads  # still loaded
    lora.apply_loras(store, [(PEFT, 1.0)])
    assert state.loads == loads + 1  # was evicted, loaded again
    assert np.array_equal(pixels(store), lstudio.baseline)


def test_switching_the_base_model_starts_with_no_adapters(lora_models, tmp_path):
    studio = make_studio(lora_models, tmp_path)
    store = studio.store
    with_lora = pixels(store, [[PEFT, 1.0]])
    old = store.base()
    store.switch("danqing-demo-st")
    assert store.base() is not old and not store.adapters.loaded
    other_base = pixels(store)
    assert not np.array_equal(pixels(store, [[PEFT, 1.0]]), other_base)
    assert np.array_equal(pixels(store), other_base)
    store.switch("danqing-demo-zh")
    assert np.array_equal(pixels(store, [[PEFT, 1.0]]), with_lora)


def test_preview_image_beside_the_file_is_offered(studio):
    preview = studio.lora_preview("danqing-demo-kohya.safetensors")
    assert preview is not None and preview.size[0] > 0
    assert studio.lora_preview("danqing-demo-peft.safetensors") is None  # none beside it
    assert studio.lora_preview("../../etc/passwd") is None  # only listed files
