"""External VAEs, textual-inversion embeddings and clip skip (issue 16): each changes the image
the way A1111's does, switching back restores the pixels, and the infotext names what was used."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_studio
from pipelines.demo import DEMO_MODEL
from pipelines.demo.library import DEMO_VAE, demo_vae
from pipelines.errors import DanqingError
from pipelines.formats.pnginfo import parse_parameters
from pipelines.formats.weights import file_hash
from pipelines.requests import Txt2Img
from pipelines.tasks.prompts import long_prompt_embeds


@pytest.fixture(scope="module")
def lib_studio(demo_models, tmp_path_factory):
    """A studio of its own (VAE switches must not leak into other tests' pixels)."""
    models = tmp_path_factory.mktemp("lib-models")
    for kind in ("checkpoints", "vae", "embeddings"):
        shutil.copytree(demo_models / kind, models / kind)
    shutil.copytree(demo_models / "lora", models.parent / "lora-src")
    return make_studio(models, tmp_path_factory.mktemp("lib-out"))


def _image(studio, **fields):
    values = dict(prompt="一只猫", width=64, height=64, num_inference_steps=3, seed=5)
    paths, info = studio.txt2img(Txt2Img.from_fields({**values, **fields}))
    with Image.open(paths[0]) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16), parse_parameters(image.info["parameters"]), info


def test_an_external_vae_changes_the_decode_and_switching_back_restores_it(lib_studio):
    studio = lib_studio
    studio.switch_model(DEMO_MODEL)
    assert studio.vae_choices() == [DEMO_VAE] and studio.current_vae() == "auto"
    unet = studio.store.base().unet
    own, own_params, _ = _image(studio)
    assert "VAE" not in own_params["fields"]  # automatic found no VAE named like this model
    studio.set_vae(DEMO_VAE)
    assert studio.store.base().unet is unet  # the U-Net stays loaded
    other, params, _ = _image(studio)
    assert np.abs(other - own).mean() > 5
    digest = file_hash(studio.store.folders.resolve("vae", DEMO_VAE))
    assert params["fields"]["VAE"] == DEMO_VAE and params["fields"]["VAE hash"] == digest
    studio.set_vae("none")
    back, params, _ = _image(studio)
    assert np.array_equal(back, own) and "VAE" not in params["fields"]


def test_automatic_vae_follows_the_model_name_and_folders_load(lib_studio):
    studio = lib_studio
    vae_dir = studio.store.folders.folder("vae")
    # A diffusers VAE folder, named like the demo model: automatic picks it.
    demo_vae(seed=9).save_pretrained(vae_dir / DEMO_MODEL)
    try:
        studio.set_vae("auto")
        assert studio.store.vae_ref == DEMO_MODEL
        _, params, _ = _image(studio)
        assert params["fields"]["VAE"] == DEMO_MODEL and "VAE hash" not in params["fields"]
    finally:
        studio.set_vae("none")
        shutil.rmtree(vae_dir / DEMO_MODEL)
    # Not a VAE (a LoRA file) and a name outside the folder: refused, the VAE in use stays.
    lora = next((studio.store.folders.root.parent / "lora-src").glob("*.safetensors"), None)
    shutil.copy(lora, vae_dir / "not-a-vae.safetensors")
    for bad, code in (("not-a-vae.safetensors", "vae_not_weights"), ("../checkpoints/x.safetensors", "bad_model_name")):
        with pytest.raises(DanqingError) as err:
            studio.set_vae(bad)
        assert err.value.code == code
        assert studio.store.vae_ref is None
    (vae_dir / "not-a-vae.safetensors").unlink()


def test_embeddings_are_listed_with_reasons_and_used_by_name(lib_studio):
    studio = lib_studio
    studio.set_vae("none")
    rows = {r["name"]: r for r in studio.embeddings()}
    assert rows["demo-neg"]["vectors"] == 2 and rows["demo-neg"]["problem"] is None
    assert rows["demo-style"]["problem"] is None and rows["demo-diffusers"]["problem"] is None
    assert rows["sd15-only"]["problem"] == "width" and rows["sd15-only"]["width"] == 768
    plain, _, _ = _image(studio, negative_prompt="模糊")
    used, params, info = _image(studio, negative_prompt="demo-neg, 模糊")
    assert np.abs(used - plain).mean() > 1
    digest = file_hash(studio.store.folders.resolve("embeddings", "demo-neg.pt"))
    assert params["fields"]["TI hashes"] == f"demo-neg: {digest}"
    # A name inside a longer word is no embedding; the 768-wide one is never spliced in.
    _, params, _ = _image(studio, negative_prompt="demo-negative sd15-only, 模糊")
    assert "TI hashes" not in params["fields"]


def test_an_embedding_of_a_words_vector_reads_as_that_word(lib_studio, tmp_path):
    """The splice is exact: an embedding holding the token vector of 猫 gives 猫's image."""
    studio = lib_studio
    pipe = studio.store.base()
    token = pipe.tokenizer("猫", add_special_tokens=False).input_ids
    assert len(token) == 1
    vector = pipe.text_encoder.get_input_embeddings().weight[token[0]].detach().clone()
    path = studio.store.folders.folder("embeddings") / "mao-vector.pt"
    torch.save({"string_to_param": {"*": vector[None]}}, path)
    try:
        word, _, _ = _image(studio, prompt="一只猫")
        spliced, params, _ = _image(studio, prompt="一只mao-vector")
        assert np.array_equal(word, spliced)
        assert params["fields"]["TI hashes"].startswith("mao-vector: ")
    finally:
        path.unlink()


def test_our_encoding_equals_diffusers_and_clip_skip_reads_an_earlier_layer(lib_studio):
    pipe = lib_studio.store.base()
    ours, ours_neg, _ = long_prompt_embeds(pipe, "一只猫", "模糊", pipe.device, always=True)
    theirs, theirs_neg = pipe.encode_prompt("一只猫", pipe.device, 1, True, "模糊")
    assert torch.allclose(ours, theirs) and torch.allclose(ours_neg, theirs_neg)
    # Clip skip 2 = the text encoder without its last layer (diffusers' own clip_skip reaches
    # for text_model, which transformers >= 5.6 no longer has, so a shortened copy is the check).
    from transformers import CLIPTextModel

    config = pipe.text_encoder.config.to_dict()
    config["num_hidden_layers"] -= 1
    shorter = CLIPTextModel(type(pipe.text_encoder.config).from_dict(config)).eval()
    missing, unexpected = shorter.load_state_dict(pipe.text_encoder.state_dict(), strict=False)
    assert not missing and unexpected  # only the last layer's weights are left over
    skipped, _, _ = long_prompt_embeds(pipe, "一只猫", "", pipe.device, clip_skip=2, always=True)
    ids = pipe.tokenizer("一只猫", padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        reference = shorter(ids)[0]
    assert torch.allclose(skipped, reference, atol=1e-5)
    one, params1, _ = _image(lib_studio)
    two, params2, info = _image(lib_studio, clip_skip=2)
    assert np.abs(one - two).mean() > 0.5
    assert params2["fields"]["Clip skip"] == "2" and "Clip skip" not in params1["fields"]
    with pytest.raises(DanqingError):
        Txt2Img.from_fields(prompt="x", clip_skip=13)
