"""Z-Image as ComfyUI users have it: three split files instead of a diffusers folder, assembled
offline into a ``ZImagePipeline``.

- ``diffusion_models/`` (ComfyUI; ``models/unet/`` in older installs): the transformer, in the
  original Z-Image key layout (``x_embedder``, fused ``attention.qkv``, ``final_layer``; bare or
  under ``model.diffusion_model.``), as ``.safetensors`` — or quantised as ``.gguf`` (city96's
  GGUF files, for 8–12 GB GPUs; needs the ``gguf`` package). Its config comes from the tensors'
  shapes (width, depth, heads, caption width); diffusers' own single-file converter renames the
  keys (``ZImageTransformer2DModel.from_single_file`` with that config, nothing downloaded).
- ``text_encoders/`` (``clip/`` in older installs): Qwen3 (``qwen_3_4b.safetensors``), in
  transformers' key layout with or without ``model.``; its config from the shapes too.
- ``vae/``: the 16-channel Flux autoencoder (``ae.safetensors``), LDM keys.

The tokenizer is not in any of them (ComfyUI ships Qwen's in its code): the store hands in
the one of an installed Z-Image folder, or of a Qwen instruct model in ``models/prompters/``
(Qwen2.5 and Qwen3 share the vocabulary).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..errors import ModelError

log = logging.getLogger(__name__)

DIT_PREFIX = "model.diffusion_model."
# The tensor that makes a file a Z-Image transformer (either layout), and its caption embedder.
DIT_MARK = re.compile(r"^(model\.diffusion_model\.)?layers\.0\.adaLN_modulation\.0\.weight$")
SPLIT_ENDINGS = (".safetensors", ".gguf")
# Z-Image-Turbo's scheduler (flow matching, shift 3); a split file does not carry one.
TURBO_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
FLUX_VAE_SCALE, FLUX_VAE_SHIFT = 0.3611, 0.1159


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a ``.safetensors`` or ``.gguf`` file, no tensor data read."""
    if path.suffix.lower() == ".gguf":
        reader = _gguf_reader(path)
        # GGUF stores shapes innermost-first; quantised tensors report their logical shape.
        return {t.name: tuple(int(x) for x in reversed(t.shape.tolist())) for t in reader.tensors}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def _gguf_reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelError("gguf_missing", name=path.name) from None
    return GGUFReader(str(path))


def is_zimage_transformer(shapes: dict) -> bool:
    return any(DIT_MARK.match(k) for k in shapes)


def transformer_config(shapes: dict[str, tuple[int, ...]]) -> dict:
    """A ZImageTransformer2DModel config from the original-layout tensor shapes."""
    s = {k.removeprefix(DIT_PREFIX): v for k, v in shapes.items()}
    dim, patch_in = s["x_embedder.weight"]
    head = s["layers.0.attention.q_norm.weight"][0]
    qkv = s["layers.0.attention.qkv.weight"][0]
    heads = dim // head
    count = lambda prefix: len({k.split(".")[1] for k in s if k.startswith(prefix)})  # noqa: E731
    return {
        "_class_name": "ZImageTransformer2DModel",
        "in_channels": patch_in // 4,  # 2×2 patches, one frame
        "dim": dim,
        "n_layers": count("layers."),
        "n_refiner_layers": count("noise_refiner."),
        "n_heads": heads,
        "n_kv_heads": (qkv // head - heads) // 2,
        "cap_feat_dim": s["cap_embedder.0.weight"][0],
        # Rotary axes (frame, height, width) split the head as Z-Image's 32/48/48 of 128 does.
        "axes_dims": [head // 4, head * 3 // 8, head * 3 // 8],
    }


def load_transformer(path: Path, dtype: torch.dtype):
    """The transformer file through diffusers' single-file loader, with a config from its
    shapes written to a temporary folder (offline). A ``.gguf`` keeps its quantised weights
    (dequantised per layer at compute time, in ``dtype``)."""
    from diffusers import ZImageTransformer2DModel

    shapes = header_shapes(path)
    if not is_zimage_transformer(shapes):
        raise ModelError("zimage_not_transformer", name=path.name)
    kwargs: dict = {"torch_dtype": dtype}
    if path.suffix.lower() == ".gguf":
        from diffusers import GGUFQuantizationConfig

        _gguf_reader(path)  # the package is there (a Chinese error otherwise)
        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="danqing-zimage-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(transformer_config(shapes)))
        try:
            return ZImageTransformer2DModel.from_single_file(str(path), config=folder, local_files_only=True,
                                                             **kwargs).eval()
        except ModelError:
            raise
        except Exception as exc:
            log.warning("cannot load the Z-Image transformer %s: %s", path.name, exc)
            raise ModelError("checkpoint_incomplete", name=path.name, part="transformer") from None


# 2. The Qwen3 text encoder ----------------------------------------------------------------------
def is_qwen3(shapes: dict) -> bool:
    keys = {k.removeprefix("model.") for k in shapes}
    return "embed_tokens.weight" in keys and "layers.0.self_attn.q_norm.weight" in keys


def qwen3_config(shapes: dict[str, tuple[int, ...]], pad_token_id: int | None):
    from transformers import Qwen3Config

    s = {k.removeprefix("model."): v for k, v in shapes.items()}
    vocab, hidden = s["embed_tokens.weight"]
    head = s["layers.0.self_attn.q_norm.weight"][0]
    return Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=s["layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=len({k.split(".")[1] for k in s if k.startswith("layers.")}),
        num_attention_heads=s["layers.0.self_attn.q_proj.weight"][0] // head,
        num_key_value_heads=s["layers.0.self_attn.k_proj.weight"][0] // head, head_dim=head,
        max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6, pad_token_id=pad_token_id,
    )


def load_text_encoder(path: Path, dtype: torch.dtype, tokenizer):
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import Qwen3Model

    state = {k.removeprefix("model."): v for k, v in load_file(str(path)).items() if not k.startswith("lm_head.")}
    config = qwen3_config({k: tuple(v.shape) for k, v in state.items()}, tokenizer.pad_token_id)
    with init_empty_weights():
        model = Qwen3Model(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        log.warning("%s does not fit Qwen3: %s", path.name, str(exc)[:300])
        raise ModelError("checkpoint_incomplete", name=path.name, part="Qwen3") from None
    return model.to(dtype).eval()


# 3. The 16-channel autoencoder ------------------------------------------------------------------
def is_flux_vae(shapes: dict) -> bool:
    conv = shapes.get("decoder.conv_in.weight")
    return conv is not None and conv[1] == 16


def load_vae(path: Path, dtype: torch.dtype):
    from .checkpoint import vae_from_state
    from .weights import read_tensors

    state = read_tensors(path, path.name, "vae", "vae_not_weights")
    vae = vae_from_state(state, path.name, dtype, FLUX_VAE_SCALE)
    vae.register_to_config(shift_factor=FLUX_VAE_SHIFT)
    return vae


# 4. Assembled -----------------------------------------------------------------------------------
def assemble(transformer_path: Path, text_encoders: list[Path], vaes: list[Path], dtype: torch.dtype,
             tokenizer_for: Callable[[int], object]):
    """A ZImagePipeline from the transformer file and the first fitting Qwen3 file and 16-channel
    VAE among those given (a Chinese error names what is missing). Returns (pipeline, the
    three files used)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    transformer = load_transformer(transformer_path, dtype)
    width = transformer.config.cap_feat_dim
    encoder_path = next((p for p in text_encoders if _fits(p, lambda s: is_qwen3(s) and _hidden(s) == width)), None)
    if encoder_path is None:
        raise ModelError("zimage_text_encoder_missing", name=transformer_path.name, width=width)
    vae_path = next((p for p in vaes if _fits(p, is_flux_vae)), None)
    if vae_path is None:
        raise ModelError("zimage_vae_missing", name=transformer_path.name)
    rows = _hidden(header_shapes(encoder_path), rows=True)
    tokenizer = tokenizer_for(rows)
    if tokenizer is None:
        raise ModelError("zimage_tokenizer_missing", name=transformer_path.name)
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**TURBO_SCHEDULER), vae=load_vae(vae_path, dtype),
                          text_encoder=load_text_encoder(encoder_path, dtype, tokenizer), tokenizer=tokenizer,
                          transformer=transformer)
    return pipe, {"transformer": transformer_path.name, "text_encoder": encoder_path.name, "vae": vae_path.name}


def _hidden(shapes: dict, rows: bool = False) -> int:
    s = {k.removeprefix("model."): v for k, v in shapes.items()}
    return s["embed_tokens.weight"][0 if rows else 1]


def _fits(path: Path, test) -> bool:
    try:
        return path.suffix.lower() == ".safetensors" and test(header_shapes(path))
    except Exception:  # unreadable: not this one
        return False
