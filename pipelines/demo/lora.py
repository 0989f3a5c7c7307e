"""Demo LoRAs: one tiny LoRA per supported format, written for the demo base model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .sd import DEMO_MODEL


# 5. Demo LoRAs ---------------------------------------------------------------------------
DEMO_LORAS = {
    "peft": "danqing-demo-peft.safetensors",
    "kohya": "danqing-demo-kohya.safetensors",
    "pai": "pai-poem-tiny/pytorch_lora_weights.bin",
    # Few-step LoRAs (极速): LCM-LoRA's layout under its published file name (nothing in the name
    # says LCM: it is recognised by its keys), and a Hyper-SD-style one under Hyper-SD's name.
    "lcm": "lcm-lora-sdv1-5-tiny/pytorch_lora_weights.safetensors",
    "hyper": "Hyper-SD15-2steps-lora-tiny.safetensors",
}

# The modules LCM-LoRA's and TCD's distillation scripts adapt: every U-Net layer that takes
# weights, the ResNets (and their time-embedding projections) included; no text encoder.
FEWSTEP_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                   "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


DEMO_TAGS = {"shuimo": 14, "ink wash painting": 11, "bamboo": 6, "panda": 3}


def save_demo_loras(root: Path) -> dict[str, Path]:
    """Tiny LoRAs for the demo base (``checkpoints/<DEMO_MODEL>``), one per format, built from
    its own module names and shapes with seeded random weights (large enough to change every
    image): diffusers/peft safetensors with text-encoder layers, Kohya safetensors with
    ``.alpha``, conv (LoCon) layers and ``ss_*`` metadata plus a preview image, and PAI's
    attention-processor ``pytorch_lora_weights.bin`` in a folder."""
    from diffusers import UNet2DConditionModel
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import CLIPTextModel


    # 1. The demo base's modules: attention projections, feed-forwards, convolutions.
    base = Path(root) / "checkpoints" / DEMO_MODEL
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder")
    attention = [(n, m) for n, m in unet.named_modules() if ".attn" in n and isinstance(m, torch.nn.Linear)]
    te_layers = [(n, m) for n, m in text_encoder.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    extra = [
        (n, m) for n, m in unet.named_modules()
        if n.endswith(("ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "resnets.0.conv1"))
    ]
    folder = Path(root) / "lora"
    written = {kind: folder / rel for kind, rel in DEMO_LORAS.items()}

    def pair(module, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(module, torch.nn.Conv2d):
            down_shape = (rank, module.in_channels, *module.kernel_size)
            up_shape = (module.out_channels, rank, 1, 1)
        else:
            down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
        return (
            (torch.randn(down_shape, generator=generator) * 0.3).contiguous(),
            (torch.randn(up_shape, generator=generator) * 0.3).contiguous(),
        )

    # 2. diffusers/peft: U-Net attention and the whole text encoder, rank 4.
    g = torch.Generator().manual_seed(101)
    state = {}
    for prefix, layers in (("unet", attention), ("text_encoder", te_layers)):
        for name, module in layers:
            down, up = pair(module, 4, g)
            state[f"{prefix}.{name}.lora_A.weight"], state[f"{prefix}.{name}.lora_B.weight"] = down, up
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, written["peft"], metadata={"format": "pt"})

    # 3. Kohya: lora_unet_/lora_te_ names (CLIP's "text_model." level included, as sd-scripts
    # writes it), alpha = rank / 2, conv layers, and the ss_* metadata the UI reads.
    g = torch.Generator().manual_seed(202)
    state = {}
    for prefix, layers in (("lora_unet_", attention + extra), ("lora_te_text_model_", te_layers)):
        for name, module in layers:
            key = prefix + name.replace(".", "_")
            down, up = pair(module, 4, g)
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
            state[f"{key}.alpha"] = torch.tensor(2.0)
    metadata = {
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": DEMO_MODEL,
        "ss_network_module": "networks.lora",
        "ss_network_dim": "4",
        "ss_network_alpha": "2.0",
        "ss_output_name": "danqing-demo-kohya",
        "ss_tag_frequency": json.dumps({"10_shuimo": DEMO_TAGS}),
    }
    save_file(state, written["kohya"], metadata=metadata)
    preview = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    preview.save(written["kohya"].with_suffix(".png"))

    # 4. PAI: attention processors' to_q_lora/to_k_lora/... (U-Net only), a pickled .bin.
    g = torch.Generator().manual_seed(303)
    state = {}
    for name, module in attention:
        head, _, proj = name.removesuffix(".0").rpartition(".")  # to_out.0 -> to_out
        down, up = pair(module, 4, g)
        key = f"{head}.processor.{proj}_lora"
        state[f"{key}.down.weight"], state[f"{key}.up.weight"] = down, up
    written["pai"].parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, written["pai"])

    # 5. Few-step LoRAs over the whole U-Net (FEWSTEP_TARGETS), small weights (a distillation
    # LoRA nudges every layer): LCM-LoRA as Kohya-style keys with alpha = rank, as diffusers'
    # conversion writes it for A1111 and ComfyUI; the Hyper-SD-style one in diffusers' own
    # ``unet.<module>.lora.down/up`` naming.
    whole = [(n, m) for n, m in unet.named_modules()
             if n.endswith(FEWSTEP_TARGETS) and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    for kind, seed in (("lcm", 404), ("hyper", 505)):
        g = torch.Generator().manual_seed(seed)
        state = {}
        for name, module in whole:
            down, up = pair(module, 4, g)
            down, up = down * 0.5, up * 0.5
            if kind == "lcm":
                key = "lora_unet_" + name.replace(".", "_")
                state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
                state[f"{key}.alpha"] = torch.tensor(4.0)
            else:
                state[f"unet.{name}.lora.down.weight"], state[f"unet.{name}.lora.up.weight"] = down, up
        written[kind].parent.mkdir(parents=True, exist_ok=True)
        save_file(state, written[kind], metadata={"format": "pt"})
    return written
