"""The LoRA adapters loaded on the base pipeline: the store's table of them (which file is
which adapter, least recently used first, which are switched on, and their bytes).

The store makes a new table with every base it loads, so a switched-away base takes its
adapters with it. tasks/lora.py decides what to load and switch; this table only records it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Adapters kept loaded on one base; the least recently used is deleted beyond this.
MAX_ADAPTERS = 8


@dataclass
class AdapterTable:
    """What is loaded on one base pipeline, and what is switched on."""

    loaded: OrderedDict = field(default_factory=OrderedDict)  # file identity -> adapter name, LRU order
    active: tuple = ()  # ((adapter name, weight), ...) as last set; () = LoRA off
    enabled: bool = False  # enable_lora is in force on every layer (a load or disable_lora clears it)
    counter: int = 0
    loads: int = 0  # files loaded on this base (tests and the benchmark read it)
    sizes: dict = field(default_factory=dict)  # adapter name -> bytes of its matrices

    def forget(self, identity: tuple) -> str:
        """Drop ``identity`` from the table; returns its adapter name."""
        name = self.loaded.pop(identity)
        self.sizes.pop(name, None)
        return name

    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def rows(self) -> list[dict]:
        """One row per loaded adapter for 系统信息: the file, its adapter name, bytes, whether active."""
        weights = dict(self.active)
        return [
            {"name": Path(identity[0]).name, "kind": "lora", "adapter": name,
             "bytes": self.sizes.get(name, 0), "active": name in weights}
            for identity, name in self.loaded.items()
        ]


def adapter_bytes(base, name: str) -> int:
    """Bytes of adapter ``name``'s matrices over the denoiser (U-Net or transformer) and the text
    encoders."""
    total = 0
    for component in ("unet", "transformer", "text_encoder", "text_encoder_2"):
        model = getattr(base, component, None)
        if not isinstance(model, torch.nn.Module):
            continue
        for module in model.modules():
            for part in ("lora_A", "lora_B"):
                layers = getattr(module, part, None)
                if layers is not None and name in layers:
                    total += sum(p.numel() * p.element_size() for p in layers[name].parameters())
    return total
