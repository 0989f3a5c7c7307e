"""The byte-budgeted cache of models loaded next to the base (ControlNets, upscalers, depth
estimators, preview decoders)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable

import torch

log = logging.getLogger(__name__)


def module_bytes(module) -> int:
    if isinstance(module, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    return int(getattr(module, "nbytes", 0))


class ResidentCache:
    """Models loaded next to the base (ControlNets, upscalers, depth estimators, ...): loaded
    lazily once per (kind, name), kept while they fit a byte budget, least recently used
    evicted first. The caller holds the store lock. ``other_bytes`` counts what else shares
    the budget (the LoRA adapters on the base), so they are evicted for too."""

    def __init__(self, budget_bytes: int, other_bytes: Callable[[], int] = lambda: 0) -> None:
        self.budget_bytes = budget_bytes
        self.other_bytes = other_bytes
        self._items: OrderedDict[tuple[str, str], tuple[object, int]] = OrderedDict()

    def get(self, kind: str, name: str, load: Callable[[], object]):
        key = (kind, name)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        model = load()
        size = module_bytes(model)
        self._items[key] = (model, size)
        self._evict(keep=key)
        return model

    def _evict(self, keep: tuple[str, str]) -> None:
        while self.total_bytes() + self.other_bytes() > self.budget_bytes and len(self._items) > 1:
            oldest = next(iter(self._items))
            if oldest == keep:
                self._items.move_to_end(keep)
                continue
            log.info("evicting %s/%s from the model cache", *oldest)
            del self._items[oldest]

    def drop(self, kind: str | None = None) -> None:
        for key in [k for k in self._items if kind is None or k[0] == kind]:
            del self._items[key]

    def total_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def rows(self) -> list[dict]:
        return [
            {"name": name, "kind": kind, "bytes": size}
            for (kind, name), (_, size) in self._items.items()
        ]
