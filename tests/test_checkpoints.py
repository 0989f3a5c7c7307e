"""Single-file checkpoints (issue 16): A1111's ``.safetensors`` / ``.ckpt`` files in the original
LDM key layout, written from the demo models, load offline through formats/checkpoint.py and
give the pixels of the diffusers folder they came from."""

import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_studio
from pipelines.demo import DEMO_MODEL, DEMO_MODEL_INPAINT
from pipelines.demo.single_file import save_single_file
from pipelines.errors import ModelError
from pipelines.formats.checkpoint import CONFIGS, Family, clip_tokenizer, family_of, load_single_file
from pipelines.formats.pnginfo import parse_parameters as read_parameters
from pipelines.requests import Txt2Img


def _pipe(folder):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def library(demo_models, tmp_path_factory):
    """A models folder holding the demo's PAI-shaped folder and single files written from it."""
    models = tmp_path_factory.mktemp("library")
    shutil.copytree(demo_models / "checkpoints" / DEMO_MODEL, models / "checkpoints" / DEMO_MODEL)
    pipe = _pipe(models / "checkpoints" / DEMO_MODEL)
    ckpt = models / "checkpoints"
    save_single_file(pipe, ckpt / "zh-fp32.safetensors", torch.float32)
    save_single_file(pipe, ckpt / "sub" / "zh-fp32.ckpt", torch.float32)
    save_single_file(pipe, ckpt / "zh-fp16.safetensors", torch.float16)
    save_single_file(pipe, ckpt / "zh-fp16-ema.ckpt", torch.float16, ema=True)
    return models


def _generate(studio, model):
    studio.switch_model(model)
    paths, _ = studio.txt2img(Txt2Img.from_fields(prompt="一只猫，水墨", negative_prompt="模糊", width=64, height=64,
                                                  num_inference_steps=4, seed=7))
    with Image.open(paths[0]) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16), image.info["parameters"]


def test_single_files_are_listed_and_give_the_folders_pixels(library, tmp_path):
    studio = make_studio(library, tmp_path / "out")
    refs = {c["ref"]: c["kind"] for c in studio.model_choices()}
    assert refs[DEMO_MODEL] == "folder"
    for name in ("zh-fp32.safetensors", "sub/zh-fp32.ckpt", "zh-fp16.safetensors", "zh-fp16-ema.ckpt"):
        assert refs[name] == "file"
    # The folder's own files (unet/diffusion_pytorch_model.*) are not listed as models.
    assert not any(ref.startswith(DEMO_MODEL + "/") for ref in refs)

    folder, folder_text = _generate(studio, DEMO_MODEL)
    for name in ("zh-fp32.safetensors", "sub/zh-fp32.ckpt"):
        pixels, text = _generate(studio, name)
        assert np.array_equal(pixels, folder), name  # same weights, same configs: same pixels
    fp16, text = _generate(studio, "zh-fp16.safetensors")
    assert 0 < np.abs(fp16 - folder).mean() < 8  # weights rounded to fp16: close, not equal
    ema, _ = _generate(studio, "zh-fp16-ema.ckpt")
    assert np.array_equal(ema, fp16)  # the non-EMA weights are the ones used (the EMA copy differs)

    # A1111's infotext: the file's stem and its short hash (the first 10 hex of its SHA-256).
    fields = read_parameters(text)["fields"]
    digest = hashlib.sha256((library / "checkpoints" / "zh-fp16.safetensors").read_bytes()).hexdigest()[:10]
    assert fields["Model"] == "zh-fp16" and fields["Model hash"] == digest
    assert "Model hash" not in read_parameters(folder_text)["fields"]  # a folder has no A1111 hash


def test_weights_load_exactly_and_9_channel_files_stay_inpainting_models(demo_models, tmp_path):
    source = _pipe(demo_models / "checkpoints" / DEMO_MODEL_INPAINT)
    path = save_single_file(source, tmp_path / "inpaint.safetensors", torch.float32)
    tokenizer = source.tokenizer
    loaded = load_single_file(path, torch.float32, lambda n: tokenizer if n == len(tokenizer) else None)
    assert loaded.unet.config.in_channels == 9
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(source, part).state_dict(), getattr(loaded, part).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    # Without a tokenizer of the text encoder's vocabulary, a clear refusal.
    with pytest.raises(ModelError) as err:
        load_single_file(path, torch.float32, lambda n: None)
    assert err.value.code == "checkpoint_no_tokenizer"


class _Payload:
    """A pickle that would create a file when unpickled (a malicious .ckpt)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_ckpt_is_refused_and_runs_nothing(library, tmp_path):
    marker = tmp_path / "pwned"
    bad = library / "checkpoints" / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callback": _Payload(marker)}, bad)
    plain = library / "checkpoints" / "evil-plain.ckpt"
    plain.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=2))
    proof = tmp_path / "payload-works"
    pickle.loads(pickle.dumps(_Payload(proof)))  # an ordinary unpickler does run it
    assert proof.exists()
    studio = make_studio(library, tmp_path / "out")
    studio.switch_model(DEMO_MODEL)
    for name in ("evil.ckpt", "evil-plain.ckpt"):
        with pytest.raises(ModelError) as err:
            studio.switch_model(name)
        assert err.value.code == "checkpoint_unsafe_file"
        assert not marker.exists()
        assert studio.current_model() == DEMO_MODEL  # the old model stays
    bad.unlink()
    plain.unlink()


def test_broken_and_foreign_files_get_clear_refusals(library, tmp_path):
    ckpt = library / "checkpoints"
    whole = (ckpt / "zh-fp16.safetensors").read_bytes()
    (ckpt / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    studio = make_studio(library, tmp_path / "out")
    with pytest.raises(ModelError) as err:
        studio.switch_model("cut.safetensors")
    assert err.value.code == "checkpoint_file_corrupt"
    (ckpt / "cut.safetensors").unlink()
    # What the keys say decides the family: an SDXL file without its OpenCLIP-G (a refiner's
    # half) and a stray VAE are named, not half-loaded; SD3 is named as unsupported.
    sdxl = {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
            "first_stage_model.encoder.conv_in.weight": torch.zeros(1)}
    with pytest.raises(ModelError) as err:
        family_of(sdxl, "xl.safetensors")
    assert err.value.code == "checkpoint_incomplete" and err.value.fields["part"] == "CLIP"
    with pytest.raises(ModelError) as err:
        family_of({"model.diffusion_model.joint_blocks.0.x": torch.zeros(1)}, "sd3.safetensors")
    assert err.value.code == "checkpoint_unsupported" and err.value.fields["family"] == "SD3"
    with pytest.raises(ModelError) as err:
        family_of({"encoder.down.0.block.0.conv1.weight": torch.zeros(1)}, "vae.safetensors")
    assert err.value.code == "checkpoint_not_base"


def test_clip_tokenizer_is_built_offline_with_clips_ids():
    sd1 = Family("sd1", json.loads((CONFIGS / "sd1.json").read_text()))
    tokenizer = clip_tokenizer(sd1)
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.pad_token == "<|endoftext|>"
    sd2 = Family("sd2", json.loads((CONFIGS / "sd2.json").read_text()))
    assert clip_tokenizer(sd2).pad_token == "!"
    tokenizer.add_tokens(["<mine>"])  # each model gets its own copy
    assert len(clip_tokenizer(sd1)) == 49408


def _sd2_file(tmp_path, v_yaml: bool):
    """A tiny SD 2.x-layout file: OpenCLIP text tower (fused in_proj, one layer more than is
    used), linear attention projections, CLIP's vocabulary."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipelines.demo.single_file import unet_to_ldm, vae_to_ldm

    torch.manual_seed(3)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=[1, 1], use_linear_projection=True, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=3, num_attention_heads=1, hidden_act="gelu"))
    state = {**unet_to_ldm(unet), **vae_to_ldm(vae)}
    t = {k.removeprefix("text_model."): v for k, v in text.state_dict().items()}
    p = "cond_stage_model.model."
    state[p + "token_embedding.weight"] = t["embeddings.token_embedding.weight"]
    state[p + "positional_embedding"] = t["embeddings.position_embedding.weight"]
    state[p + "ln_final.weight"], state[p + "ln_final.bias"] = t["final_layer_norm.weight"], t["final_layer_norm.bias"]
    state[p + "text_projection"] = torch.randn(64, 64)
    for i in range(3):
        q = f"encoder.layers.{i}."
        r = f"{p}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            state[r + f"attn.in_proj_{part}"] = torch.cat([t[q + f"self_attn.{n}_proj.{part}"] for n in "qkv"])
            state[r + f"attn.out_proj.{part}"] = t[q + f"self_attn.out_proj.{part}"]
            state[r + f"ln_1.{part}"], state[r + f"ln_2.{part}"] = t[q + f"layer_norm1.{part}"], t[q + f"layer_norm2.{part}"]
            state[r + f"mlp.c_fc.{part}"], state[r + f"mlp.c_proj.{part}"] = t[q + f"mlp.fc1.{part}"], t[q + f"mlp.fc2.{part}"]
    path = tmp_path / "sd2-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    if v_yaml:
        path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n", encoding="utf-8")
    return path, unet, text


def test_sd2_files_load_with_the_penultimate_text_layer_and_v_prediction(tmp_path):
    path, unet, text = _sd2_file(tmp_path, v_yaml=True)
    pipe = load_single_file(path, torch.float32, lambda n: None)
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # said by the .yaml beside it
    assert pipe.tokenizer.pad_token == "!" and pipe.text_encoder.config.hidden_act == "gelu"
    assert pipe.text_encoder.config.num_hidden_layers == 2  # SD 2 reads the penultimate layer
    assert pipe.unet.config.use_linear_projection and pipe.unet.config.upcast_attention
    a, b = unet.state_dict(), pipe.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ids = pipe.tokenizer("ink", return_tensors="pt").input_ids
    ours = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-1]
    theirs = text(ids, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(ours, theirs, atol=1e-5)
    image = pipe("ink", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    # Without a .yaml the file is probed (A1111's test at the last timestep): it runs and decides.
    path.with_suffix(".yaml").unlink()
    probed = load_single_file(path, torch.float32, lambda n: None)
    assert probed.scheduler.config.prediction_type in ("epsilon", "v_prediction")


def test_a_single_files_card_and_preview_are_read(demo_models, tmp_path):
    """The A1111 card (x.json) and preview (x.preview.png) beside a checkpoint, as the demo
    bundle's single file has them; a model without a card has an empty one."""
    studio = make_studio(demo_models, tmp_path / "out")
    card = studio.model_card("danqing-demo-single.safetensors")
    assert card["base_model"] == "SD1" and card["trigger_words"] == ["水墨", "国风"]
    assert "演示用的单文件模型" in card["description"]
    assert card["preview"].endswith("danqing-demo-single.preview.png")
    assert studio.model_card(DEMO_MODEL) == {}
    assert studio.model_card("no-such-model") == {}
