"""Single-file Stable Diffusion checkpoints (what A1111 keeps in ``models/Stable-diffusion``:
``.safetensors`` and old ``.ckpt``) turned into diffusers components, fully offline.

1. Read: safetensors, or a pickle with ``weights_only=True`` (Lightning's ``state_dict``
   wrapper is unwrapped; a pickle holding anything but tensors is refused, never run).
2. Family from the keys: SD 1.x (CLIP ViT-L text encoder under ``cond_stage_model.transformer``),
   SD 2.x (OpenCLIP under ``cond_stage_model.model``) or SDXL (both, under
   ``conditioner.embedders.0/1``); SD3 and Flux are named and refused.
3. Configs from the weights' shapes (channels, depths, which levels attend, the U-Net's input
   channels: 4, or 9 for inpainting; the text encoder's width, depth and vocabulary); what shapes
   cannot tell (attention heads, activation, scheduler) from ``configs/sd1.json`` /
   ``configs/sd2.json``. An A1111-style ``.yaml`` beside the file may say ``parameterization: v``
   and the attention heads; without one, an SD 2.x file is probed for v-prediction the way A1111
   does (one U-Net call at the last timestep).
4. Keys: diffusers' own LDM → diffusers maps (``convert_ldm_unet_checkpoint`` and friends).
5. Tokenizer: CLIP's byte-pair vocabulary (``configs/clip-merges.txt.gz``) when the text encoder
   has CLIP's 49,408 tokens; otherwise (PAI-Diffusion's BERT vocabulary) the tokenizer of an
   installed diffusers model with the same vocabulary, handed in by the store.

Weights load into modules built on the meta device (no random initialisation), then are cast
to the store's dtype: fp16 and fp32, EMA-only and pruned files all load the same way (a file
with both EMA and non-EMA weights loads the non-EMA ones, as A1111 does).
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import ModelError
from .weights import read_tensors

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).with_name("configs")
CHECKPOINT_ENDINGS = (".safetensors", ".ckpt")
UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer."
OPEN_CLIP = "cond_stage_model.model."
XL_CLIP = "conditioner.embedders.0.transformer."
XL_OPEN_CLIP = "conditioner.embedders.1.model."
CLIP_VOCAB = 49408


@dataclass(frozen=True)
class Family:
    name: str  # "sd1" | "sd2" | "sdxl"
    defaults: dict


def family_of_name(name: str) -> Family:
    return Family(name, json.loads((CONFIGS / f"{name}.json").read_text(encoding="utf-8")))


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The flat state dict of a single-file checkpoint."""
    return read_tensors(path, path.name, "checkpoint", "checkpoint_not_weights", wrappers=("state_dict",))


def family_of(state: dict, label: str) -> Family:
    """SD 1.x or 2.x, from which text encoder the file carries; anything else refused by name."""
    keys = state.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has(UNET + "joint_blocks.") or has("text_encoders."):
        raise ModelError("checkpoint_unsupported", name=label, family="SD3")
    if has("double_blocks.") or has(UNET + "double_blocks."):
        raise ModelError("checkpoint_unsupported", name=label, family="Flux")
    if UNET + "input_blocks.0.0.weight" not in state:
        if has("encoder.down.") or has("lora_") or has("lora_unet"):
            raise ModelError("checkpoint_not_base", name=label)  # a VAE or a LoRA put among checkpoints
        raise ModelError("checkpoint_unsupported", name=label, family="?")
    if not has(VAE):
        raise ModelError("checkpoint_incomplete", name=label, part="VAE")
    if has("conditioner.embedders."):
        if not has(XL_CLIP) or not has(XL_OPEN_CLIP + "transformer."):
            # a refiner (OpenCLIP-G only) or a file without its text encoders
            raise ModelError("checkpoint_incomplete", name=label, part="CLIP")
        name = "sdxl"
    elif has(OPEN_CLIP + "transformer."):
        name = "sd2"
    elif has(CLIP):
        name = "sd1"
    else:
        raise ModelError("checkpoint_incomplete", name=label, part="CLIP")
    return family_of_name(name)


def _indices(state: dict, prefix: str) -> list[int]:
    found = set()
    for key in state:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _groups(*channels: int) -> int:
    """GroupNorm groups: 32 (every SD model), fewer for widths below 32 (the test models)."""
    return math.gcd(32, *channels)


def read_sidecar(path: Path) -> dict:
    """What an A1111 ``.yaml`` beside the checkpoint says about parameterization and heads."""
    yaml_path = path.with_suffix(".yaml")
    if not yaml_path.is_file() or yaml_path.stat().st_size > 1 << 20:
        return {}
    try:
        import yaml

        params = (yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}).get("model", {}).get("params", {})
        unet = params.get("unet_config", {}).get("params", {})
    except Exception as exc:  # a broken sidecar is ignored: shapes and defaults still work
        log.warning("ignoring %s: %s", yaml_path.name, exc)
        return {}
    out = {}
    if params.get("parameterization") in ("v", "eps"):
        out["v_prediction"] = params["parameterization"] == "v"
    for key in ("num_heads", "num_head_channels"):
        if isinstance(unet.get(key), int) and unet[key] > 0:
            out[key] = unet[key]
    return out


# 1. Configs from shapes -------------------------------------------------------------------
def unet_config(state: dict, family: Family, sidecar: dict) -> dict:
    conv_in = state[UNET + "input_blocks.0.0.weight"]
    blocks = [i for i in _indices(state, UNET + "input_blocks.") if i > 0]
    downs = [i for i in blocks if UNET + f"input_blocks.{i}.0.op.weight" in state]
    layers = downs[0] - 1 if downs else len(blocks)
    widths, attends, depths = [], [], []
    for level in range(len(downs) + 1):
        first = 1 + level * (layers + 1)
        widths.append(int(state[UNET + f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
        attn = UNET + f"input_blocks.{first}.1."
        attends.append(attn + "proj_in.weight" in state)
        depths.append(len(_indices(state, attn + "transformer_blocks.")) if attends[-1] else 0)
    attending = [d for d in depths if d]
    depth = attending[-1] if attending else 1
    if len(set(attending)) > 1:  # SDXL: 1, 2 and 10 transformer blocks by level (none at the first)
        depth = [d or 1 for d in depths]
    to_k = next(k for k in state if k.startswith(UNET) and k.endswith("attn2.to_k.weight"))
    proj_in = next(k for k in state if k.startswith(UNET) and k.endswith(".proj_in.weight"))
    defaults = family.defaults["unet"]
    if "num_heads" in sidecar or ("num_heads" in defaults and "num_head_channels" not in sidecar):
        heads = sidecar.get("num_heads", defaults.get("num_heads"))
    else:
        per_head = sidecar.get("num_head_channels", defaults["head_channels"])
        heads = [max(1, w // per_head) for w in widths]
    extra = {}
    if UNET + "label_emb.0.0.weight" in state:  # SDXL: sizes and the pooled text embedding
        inputs = int(state[UNET + "label_emb.0.0.weight"].shape[1])
        pooled = int(state[XL_OPEN_CLIP + "text_projection"].shape[1]) if XL_OPEN_CLIP + "text_projection" in state else 1280
        extra = {"addition_embed_type": "text_time", "addition_time_embed_dim": (inputs - pooled) // 6,
                 "projection_class_embeddings_input_dim": inputs}
    return {
        **extra,
        "sample_size": defaults["sample_size"],
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(state[UNET + "out.2.weight"].shape[0]),
        "block_out_channels": widths,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        "cross_attention_dim": int(state[to_k].shape[1]),
        "attention_head_dim": heads,
        "use_linear_projection": state[proj_in].ndim == 2,
        "transformer_layers_per_block": depth,
        "upcast_attention": defaults["upcast_attention"],
        "norm_num_groups": _groups(*widths),
    }


def vae_config(state: dict, prefix: str, scaling_factor: float) -> dict:
    conv_in = state[prefix + "encoder.conv_in.weight"]
    levels = _indices(state, prefix + "encoder.down.")
    layers = len(_indices(state, prefix + "encoder.down.0.block."))
    widths = [int(state[prefix + f"encoder.down.{i}.block.{layers - 1}.conv2.weight"].shape[0]) for i in levels]
    return {
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(state[prefix + "decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(widths),
        "up_block_types": ["UpDecoderBlock2D"] * len(widths),
        "block_out_channels": widths,
        "layers_per_block": layers,
        "latent_channels": int(state[prefix + "decoder.conv_in.weight"].shape[1]),
        "norm_num_groups": _groups(*widths),
        "scaling_factor": scaling_factor,
        "sample_size": 512,
        # The Flux autoencoder (Z-Image's) has no 1×1 convolutions around its latents
        "use_quant_conv": prefix + "quant_conv.weight" in state,
        "use_post_quant_conv": prefix + "post_quant_conv.weight" in state,
    }


def text_config(text_state: dict, family: Family, part: str = "text_encoder") -> dict:
    """A CLIPTextConfig for the (already diffusers-keyed) text encoder state."""
    defaults = family.defaults[part]
    tokens = text_state["text_model.embeddings.token_embedding.weight"]
    hidden = int(tokens.shape[1])
    layers = len(_indices(text_state, "text_model.encoder.layers."))
    width = defaults["head_width"]
    return {
        "vocab_size": int(tokens.shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(text_state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // width if hidden % width == 0 else max(1, hidden // 8),
        "max_position_embeddings": int(text_state["text_model.embeddings.position_embedding.weight"].shape[0]),
        "hidden_act": defaults["hidden_act"],
        "layer_norm_eps": defaults["layer_norm_eps"],
        "projection_dim": (int(text_state["text_projection.weight"].shape[0])
                           if "text_projection.weight" in text_state else hidden),
    }


# 2. Components ------------------------------------------------------------------------------
def _materialise(cls, config: dict, weights: dict, label: str, part: str, dtype: torch.dtype):
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = cls(config) if not hasattr(cls, "from_config") else cls.from_config(config)
    try:
        module.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:  # missing or odd-shaped keys: not a model of this layout
        log.warning("%s: %s does not fit: %s", label, part, str(exc)[:500])
        raise ModelError("checkpoint_incomplete", name=label, part=part) from None
    return module.to(dtype=dtype).eval()


def _vocab_size(state: dict, family: Family, label: str) -> int:
    key = {"sd1": CLIP + "text_model.embeddings.token_embedding.weight",
           "sdxl": XL_CLIP + "text_model.embeddings.token_embedding.weight"}.get(family.name,
                                                                                 OPEN_CLIP + "token_embedding.weight")
    if key not in state:
        raise ModelError("checkpoint_incomplete", name=label, part="CLIP")
    return int(state[key].shape[0])


def _text_encoder(state: dict, family: Family, label: str, dtype: torch.dtype, tokenizer, second: bool = False):
    """The text encoder (``second``: SDXL's OpenCLIP-G, with its projection)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls, part = (CLIPTextModelWithProjection, "text_encoder_2") if second else (CLIPTextModel, "text_encoder")
    if family.name == "sdxl" and second:
        width = int(state[XL_OPEN_CLIP + "token_embedding.weight"].shape[1])
        text_state = convert_open_clip_checkpoint(_Width(width), state, prefix=XL_OPEN_CLIP)
    elif family.name in ("sd1", "sdxl"):
        text_state = convert_ldm_clip_checkpoint(state)
    else:
        width = int(state[OPEN_CLIP + "token_embedding.weight"].shape[1])
        text_state = convert_open_clip_checkpoint(_Width(width), state)
        if family.defaults["text_encoder"].get("skip_last_layer"):
            last = max(_indices(text_state, "text_model.encoder.layers."))
            text_state = {k: v for k, v in text_state.items() if not k.startswith(f"text_model.encoder.layers.{last}.")}
    text_state = {k: v for k, v in text_state.items()
                  if (k.startswith("text_model.") or (second and k == "text_projection.weight"))
                  and not k.endswith("position_ids")}
    # Which ids open and close a prompt comes from the tokenizer (CLIP's, or BERT's [CLS]/[SEP]).
    config = CLIPTextConfig(
        **text_config(text_state, family, part),
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    from accelerate import init_empty_weights

    with init_empty_weights():
        wrapped = hasattr(cls(config), "text_model")
    if not wrapped:  # transformers >= 5.6 flattened CLIPTextModel
        text_state = {k.removeprefix("text_model."): v for k, v in text_state.items()}
    return _materialise(cls, config, text_state, label, "CLIP", dtype)


class _Width:
    """What ``convert_open_clip_checkpoint`` reads from a text model: its width."""

    def __init__(self, hidden: int) -> None:
        self.config = type("Config", (), {"hidden_size": hidden})()


def vae_from_state(state: dict, label: str, dtype: torch.dtype, scaling_factor: float = 0.18215):
    """An AutoencoderKL from an LDM-keyed VAE (inside a checkpoint, or a standalone VAE file)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    prefix = VAE if any(k.startswith(VAE) for k in state) else ""
    if prefix + "encoder.conv_in.weight" not in state:
        raise ModelError("checkpoint_incomplete", name=label, part="VAE")
    config = vae_config(state, prefix, scaling_factor)
    weights = convert_ldm_vae_checkpoint({k: v for k, v in state.items() if k.startswith(prefix)}, config)
    return _materialise(AutoencoderKL, config, weights, label, "VAE", dtype)


def vae_latent_channels(path: Path) -> int | None:
    """A VAE's latent channels from its folder's config or its safetensors header, without
    loading it (4 for SD's and SDXL's, 16 for the Flux/Z-Image ``ae.safetensors``); None when
    that cannot be told cheaply (a pickle)."""
    try:
        if path.is_dir():
            return int(json.loads((path / "config.json").read_text(encoding="utf-8"))["latent_channels"])
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                key = next((k for k in f.keys() if k.endswith("decoder.conv_in.weight")), None)
                return int(f.get_slice(key).get_shape()[1]) if key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def load_vae(path: Path, dtype: torch.dtype, scaling_factor: float):
    """An external VAE: a diffusers folder, or a single file (``.safetensors``, ``.pt``/``.ckpt``
    read with ``weights_only=True``) with LDM keys, bare or under ``first_stage_model.``.
    ``scaling_factor`` is the base model's: a VAE file does not say it."""
    if path.is_dir():
        from diffusers import AutoencoderKL

        try:
            vae = AutoencoderKL.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
        except Exception as exc:
            log.warning("cannot load VAE folder %s: %s", path.name, exc)
            raise ModelError("vae_file_corrupt", name=path.name) from None
        vae.register_to_config(scaling_factor=scaling_factor)
        return vae.eval()
    state = read_tensors(path, path.name, "vae", "vae_not_weights", wrappers=("state_dict",))
    if not any(k.endswith("encoder.conv_in.weight") for k in state):
        raise ModelError("vae_not_weights", name=path.name)
    try:
        return vae_from_state(state, path.name, dtype, scaling_factor)
    except ModelError:
        raise ModelError("vae_not_weights", name=path.name) from None


def predicts_v(unet) -> bool:
    """A1111's probe for SD 2.x files without a .yaml: at the last timestep an ε-model returns
    about its input, a v-model about its negative."""
    param = next(unet.parameters())
    with torch.no_grad():
        x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=param.device, dtype=param.dtype)
        cond = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=param.device, dtype=param.dtype)
        out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=cond).sample
    return (out.float() - x[:, : out.shape[1]].float()).mean().item() < -1


# 3. Tokenizers ---------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2 and CLIP's byte-level BPE (printable
    bytes stand for themselves, the others are moved past U+0100 in byte order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + len(table) - len(printable))
    return table


@functools.lru_cache(maxsize=4)
def _clip_tokenizer(pad_token: str, max_length: int):
    from transformers import CLIPTokenizer

    with gzip.open(CONFIGS / "clip-merges.txt.gz", "rt", encoding="utf-8") as f:
        merges_text = f.read()
    merges = merges_text.splitlines()[1:]
    chars = list(_bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in merges),
              "<|startoftext|>", "<|endoftext|>"]
    folder = Path(tempfile.mkdtemp(prefix="danqing-clip-"))
    try:
        (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": pad_token, "do_lower_case": True,
        }), encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def clip_tokenizer(family: Family, second: bool = False):
    """CLIP's tokenizer as the family uses it (a copy: embeddings add tokens to it); ``second``:
    SDXL's second, OpenCLIP-G's, which pads with ``!`` (id 0) where the first pads with its end
    token."""
    spec = family.defaults["tokenizer_2" if second else "tokenizer"]
    return copy.deepcopy(_clip_tokenizer(spec["pad_token"], spec["model_max_length"]))


# 4. The whole pipeline ------------------------------------------------------------------------
def load_single_file(path: Path, dtype: torch.dtype, tokenizer_for: Callable[[int], object | None]):
    """A StableDiffusionPipeline from one checkpoint file, in CPU memory (the store places it on
    the GPU once the previous model has left). ``tokenizer_for(vocab_size)`` returns an
    installed model's tokenizer with that vocabulary, or None."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    import diffusers

    label = path.name
    state = read_checkpoint(path)
    family = family_of(state, label)
    sidecar = read_sidecar(path)

    # 1. U-Net (4 or 9 input channels, read from the weights)
    config = unet_config(state, family, sidecar)
    unet_state = convert_ldm_unet_checkpoint(state, config)
    unet = _materialise(UNet2DConditionModel, config, unet_state, label, "U-Net", dtype)
    del unet_state

    # 2. Tokenizer: CLIP's own vocabulary, or an installed model's of the same size
    vocab = _vocab_size(state, family, label)
    tokenizer = clip_tokenizer(family) if vocab == CLIP_VOCAB else tokenizer_for(vocab)
    if tokenizer is None:
        raise ModelError("checkpoint_no_tokenizer", name=label, vocab=vocab)

    # 3. VAE and text encoder(s)
    vae = vae_from_state(state, label, dtype, family.defaults["vae"]["scaling_factor"])
    text_encoder = _text_encoder(state, family, label, dtype, tokenizer)
    extra = {}
    if family.name == "sdxl":
        tokenizer_2 = clip_tokenizer(family, second=True)
        extra = {"tokenizer_2": tokenizer_2,
                 "text_encoder_2": _text_encoder(state, family, label, dtype, tokenizer_2, second=True)}
    v_keys = "v_pred" in state  # NoobAI-XL v-pred and kin: empty v_pred / ztsnr marker tensors
    del state

    # 4. Scheduler: the family's, with v-prediction from the .yaml or the probe (SD 2.x)
    scheduler_config = dict(family.defaults["scheduler"])
    if sidecar.get("v_prediction") is not None:
        v = sidecar["v_prediction"]
    else:
        v = v_keys or (family.name == "sd2" and predicts_v(unet))
    if v:
        scheduler_config["prediction_type"] = "v_prediction"
        scheduler_config["rescale_betas_zero_snr"] = False
    if family.name == "sdxl" and v:  # A1111/Forge: v-pred SDXL runs with zero terminal SNR
        scheduler_config["rescale_betas_zero_snr"] = True
        scheduler_config["timestep_spacing"] = "trailing"  # so the last step reaches the zero-SNR end
    cls = getattr(diffusers, scheduler_config.pop("_class_name"))
    scheduler = cls.from_config(scheduler_config)
    log.info("%s: %s, %d input channels, %s", label, family.name, unet.config.in_channels,
             "v-prediction" if v else "epsilon")
    if family.name == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                         scheduler=scheduler, **extra)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
